"""In-context prediction: solve a new task from a context set of K labelled examples, with no training run.

Training-free baselines on frozen (or TPP / LoRA-adapted) backbone features: prototype (nearest class
centroid) and kNN, with a softmax temperature calibrated on the context set by leave-one-out; for
segmentation, per-patch-token prototypes of foreground and background. Modules: :mod:`~.methods` (pure
functions on tensors), :mod:`~.context` (reading and checking context sets), :mod:`~.features` (the encoder),
:mod:`~.predict` (answering queries). Deployment: :mod:`tpp.serve.contexts` (context sets published like
adapters), :mod:`tpp.serve.context` (the service's routes), :mod:`tpp.serve.context_commands` (``tpp predict
--context``, ``tpp context``), :mod:`tpp.serve.adapter_features` (TPP / LoRA-adapted features).
The learned in-context models (Neuralizer / UniverSeg style): :mod:`~.learned` (the set classifier and the
CrossConv segmenter), :mod:`~.episodes` and :mod:`~.synthetic` (the leave-one-dataset-out task distribution),
trained by ``tpp run incontext`` (``recipes/incontext.py``) and used as method ``learned``.
"""
