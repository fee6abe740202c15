"""Training tooling that never ships to the Hub: the accelerate loop (``loop``), crash-safe checkpoints
(``checkpoints``), metrics and plots (``metrics``), signal handling (``signals``), the Hub-ready export
(``export``) and the pretraining job that ties them together (``pretrain``)."""
