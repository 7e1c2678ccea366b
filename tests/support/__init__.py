"""Helpers the tests share, and what a benchmark reuses from them (bench may import tests.support; tests never
import bench)."""
