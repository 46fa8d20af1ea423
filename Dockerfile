# canbridge container image.
#   podman build -t canbridge .        (or docker build; BASE can point at a local image)
#   podman run --network host -v ./config:/etc/canbridge:ro canbridge
# --network host: SocketCAN interfaces (can0) live in the host's network namespace.
ARG BASE=python:3.12-slim
FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY canbridge ./canbridge
COPY plugins ./plugins
RUN python3 -m venv /opt/canbridge \
 && /opt/canbridge/bin/pip install --no-cache-dir . \
 && rm -rf /src \
 && (getent passwd canbridge || useradd --system --home-dir /var/lib/canbridge canbridge) \
 && mkdir -p /var/lib/canbridge /etc/canbridge && chown canbridge /var/lib/canbridge

ENV PATH=/opt/canbridge/bin:$PATH
USER canbridge
WORKDIR /var/lib/canbridge
# OPC UA, Modbus TCP, HTTP (each plugin listens on 127.0.0.1 unless its config says otherwise)
EXPOSE 4840 5020 8080
HEALTHCHECK CMD ["python3", "-c", "import canbridge"]
ENTRYPOINT ["canbridge"]
CMD ["run", "/etc/canbridge/canbridge.yaml"]
