"""effv2 backends: the torch and JAX adapters, the oracle as an adapter (`oracle`), the backend
registry (`registry`), the conformance kit (`conformance`: protocol, harness, property runner) and
the peer-format converters; the `generate`, `check`, `conformance`, `convert` and `export` commands."""
