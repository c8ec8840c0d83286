# syntax=docker/dockerfile:1

# ---- Builder ---------------------------------------------------------------
# The crate needs Rust >= 1.94 (rust-version in Cargo.toml).
FROM rust:1.95-bookworm AS builder
WORKDIR /build

# Build the dependencies alone first, so that this layer is reused as long as
# Cargo.toml and Cargo.lock do not change.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && : > src/lib.rs \
    && echo 'fn main() {}' > benches/signin.rs \
    && cargo build --release --locked \
    && rm -rf src benches

# Migrations (sqlx::migrate!), askama templates and the stylesheet are embedded
# in the binary at compile time, so they must be present for the build.
COPY src ./src
COPY migrations ./migrations
COPY templates ./templates
COPY static ./static
COPY benches ./benches

# Make sure cargo rebuilds the crate itself rather than reusing the placeholder.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin gatehouse

# ---- Runtime ---------------------------------------------------------------
FROM debian:bookworm-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 gatehouse \
    && useradd --system --uid 10001 --gid gatehouse \
        --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin gatehouse

COPY --from=builder /build/target/release/gatehouse /usr/local/bin/gatehouse

# Gatehouse reads an optional gatehouse.toml from its working directory;
# mount one at /etc/gatehouse/gatehouse.toml or use GATEHOUSE_* variables.
WORKDIR /etc/gatehouse

USER 10001:10001

ENV GATEHOUSE_BIND=0.0.0.0:8080
EXPOSE 8080

ENTRYPOINT ["gatehouse"]
CMD ["serve"]
