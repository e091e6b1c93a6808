"""tickmesh core: wire schema, subjects, config, bars, workers, sink and CLI."""
