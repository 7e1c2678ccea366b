"""Developer tools, never imported by the running container: packaging a model
(``torch-mme package``), the demo, the example models' builders and a helper that
runs ``serve`` locally for tests and benchmarks."""
