"""Benchmarks behind ``scnet-bench``: each figure is measured beside its baseline's, in the same process.

- :mod:`scnet.bench.data`: loader throughput with the training transforms, against torchvision's ImageFolder.
- :mod:`scnet.bench.model`: a model's training (or inference) step against another's, alternated step by
  step, with the activation memory each saves for backward.
- :mod:`scnet.bench.profile`: where a step's time goes, kernel by kernel (``scnet-bench model --kernel-table``).
"""
