# One image with the three binaries; docker-compose.yml runs it as the API
# and as any number of workers.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bin cairn-api --bin cairn-worker --bin cairn

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/cairn-api /src/target/release/cairn-worker /src/target/release/cairn /usr/local/bin/
ENV CAIRN_DATA_DIR=/var/lib/cairn
VOLUME /var/lib/cairn
CMD ["cairn-api"]
