"""An example canbridge plugin: appends every signal change to a CSV file.

Install it next to canbridge (``pip install ./docs/example-plugin``) and enable it in the
configuration::

    plugins:
      csvlog: {file: changes.csv, interval_s: 1.0, signals: ["demo.MotorStatus.*"]}
"""
