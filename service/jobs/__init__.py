"""Adaptation jobs: records on disk, the job function, and the executors that run it."""
