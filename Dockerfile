# canbridge container image.
#   docker build -t canbridge .          (or tools/build-image.sh: podman/buildah, local base, smoke test)
#   docker run --network host -v ./config:/etc/canbridge:ro -v canbridge-state:/var/lib/canbridge canbridge
# --network host: SocketCAN interfaces (can0) live in the host's network namespace (docs/deployment.md).
#
# BASE: any image with python3 >= 3.11 and the venv module, and `useradd` (passwd); e.g. a local Debian 12
# base built by tools/image/build-base.sh when no registry is reachable.
# Secret pip_cert (optional): a CA bundle for pip behind a TLS-inspecting proxy:
#   docker build --secret id=pip_cert,src=/etc/ssl/certs/ca-certificates.crt .
# It is mounted for the one RUN that needs it and never stored in a layer.
ARG BASE=python:3.12-slim
FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# No WORKDIR /src: buildah would leave the (deleted) working directory behind as an empty directory.
COPY pyproject.toml README.md LICENSE /src/
COPY canbridge /src/canbridge
COPY plugins /src/plugins
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
 && python3 -m venv /opt/canbridge \
 && /opt/canbridge/bin/pip install /src \
 && rm -rf /src \
 && (getent passwd canbridge || useradd --system --user-group --home-dir /var/lib/canbridge \
        --shell /usr/sbin/nologin canbridge) \
 && mkdir -p /var/lib/canbridge /etc/canbridge && chown canbridge:canbridge /var/lib/canbridge

ENV PATH=/opt/canbridge/bin:$PATH
USER canbridge
WORKDIR /var/lib/canbridge
# OPC UA, Modbus TCP, HTTP (each plugin listens on 127.0.0.1 unless its config says otherwise)
EXPOSE 4840 5020 8080
ENTRYPOINT ["canbridge"]
CMD ["run", "/etc/canbridge/canbridge.yaml"]
