"""In-context prediction: solve a new task from a context set of K labelled examples, with no training run.

Training-free baselines on frozen (or TPP / LoRA-adapted) backbone features: prototype (nearest class
centroid) and kNN, with a softmax temperature calibrated on the context set by leave-one-out; for
segmentation, per-patch-token prototypes of foreground and background. Modules: :mod:`~.methods` (pure
functions on tensors), :mod:`~.context` (reading and checking context sets), :mod:`~.features` (the encoder),
:mod:`~.predict` (answering queries), :mod:`~.store` (context sets published like adapters).
A learned in-context model (Neuralizer / UniverSeg style) is not built yet.
"""
