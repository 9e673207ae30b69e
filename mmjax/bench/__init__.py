"""Benchmarks: the training step's time, FLOPs (XLA's and an analytic count), MFU and memory,
beside OpenCLIP's step on the same model (`mmjax bench train-step`)."""
