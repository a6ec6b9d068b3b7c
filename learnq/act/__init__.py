"""Activation quantizers: one family (:mod:`learnq.act.base`) on one straight-through function, in two placements.

* after an activation module (quantization-aware training): :func:`insert_activation_quantizers` wraps every
  ``nn.ReLU`` / ``nn.ReLU6`` as ``QuantizedActivation(act, quantizer)`` with a :class:`PACT` (learned clip, Choi et
  al. 2018; ``learnq/act/pact.py``) or an :class:`ObserverFakeQuant` (running min-max; ``learnq/act/observer.py``);
* at the input of a conv/linear layer (post-training quantization): :func:`attach_input_quantizers` registers an
  :class:`ActQuantizer` (calibrated α, LAPQ seeds/001 §3; ``learnq/act/input_quant.py``), :func:`calibrate` observes.

The model file records both through one metadata entry, ``"activations"`` (:mod:`learnq.act.state`).
"""

from learnq.act.base import ActGrid, ActivationQuantizer, fake_quantize
from learnq.act.input_quant import (
    ATTR,
    ActQuantizer,
    attach_input_quantizers,
    calibrate,
    input_quantizers,
    remove_input_quantizers,
)
from learnq.act.observer import ObserverFakeQuant
from learnq.act.pact import MIN_CLIP, PACT
from learnq.act.state import (
    ACTIVATIONS_KEY,
    activation_state,
    restore_activation_state,
    restore_wrappers,
    wrapper_state,
)
from learnq.act.wrappers import (
    ACTIVATION_METHODS,
    WRAPPER_METHODS,
    QuantizedActivation,
    insert_activation_quantizers,
    wrapped_activations,
)

__all__ = ["ACTIVATIONS_KEY", "ACTIVATION_METHODS", "ATTR", "ActGrid", "ActQuantizer", "ActivationQuantizer",
           "MIN_CLIP", "ObserverFakeQuant", "PACT", "QuantizedActivation", "WRAPPER_METHODS", "activation_state",
           "attach_input_quantizers", "calibrate", "fake_quantize", "input_quantizers", "insert_activation_quantizers",
           "remove_input_quantizers", "restore_activation_state", "restore_wrappers", "wrapped_activations",
           "wrapper_state"]
