# Images for the agent (`cairn`, the Job entrypoint) and the controller.
#   docker build --target agent -t cairn:dev .
#   docker build --target controller -t cairn-controller:dev .
# Both run as the non-root user 65532 on a distroless base with no shell.
# Not built in CI here (no container runtime on the build machines).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p cairn-agent -p cairn-controller

FROM gcr.io/distroless/cc-debian12:nonroot AS agent
COPY --from=build /src/target/release/cairn /usr/local/bin/cairn
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/cairn"]

FROM gcr.io/distroless/cc-debian12:nonroot AS controller
COPY --from=build /src/target/release/cairn-controller /usr/local/bin/cairn-controller
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/cairn-controller"]
