# syntax=docker/dockerfile:1
# The xoflow binary in a small image: one image for every stage
# (`xoflow ingest | enrich | sink | alert | console | migrate`).
#
#   docker build -t xoflow:dev .
#
# Build stage: librdkafka is built from source by rdkafka's cmake-build
# (cmake, libcurl), the protobuf contract by prost (protoc).
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake protobuf-compiler libcurl4-openssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin xoflow \
 && cp target/release/xoflow /usr/local/bin/xoflow

# Run stage: the binary, its shared libraries, CA roots for TLS (webhooks,
# Kafka/ClickHouse over TLS), an unprivileged user.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libcurl4 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home xoflow
COPY --from=build /usr/local/bin/xoflow /usr/local/bin/xoflow
USER 10001
# Listen on every interface inside a container; the defaults (loopback)
# suit one machine.
ENV XOFLOW_ADMIN__ADDR=0.0.0.0:9464 \
    XOFLOW_INGEST__GRPC_ADDR=0.0.0.0:50051 \
    XOFLOW_INGEST__HTTP_ADDR=0.0.0.0:8080 \
    XOFLOW_ALERT__API_ADDR=0.0.0.0:8090 \
    XOFLOW_LOG__JSON=true
# admin (metrics, health, console), gRPC collector, HTTP collector, case API
EXPOSE 9464 50051 8080 8090
ENTRYPOINT ["/usr/local/bin/xoflow"]
CMD ["run"]
