"""The training state as safetensors + JSON, no pickle: what ``accelerator.save_state`` saves, in safe files.

For a model that is not sharded (``distributed_type`` NO, MULTI_CPU, MULTI_GPU), ``save_training_state`` writes
what accelerate 1.15's ``save_accelerator_state`` writes, without torch.save:

- ``model.safetensors``: ``accelerator.get_state_dict(model, unwrap=False)``, saved by accelerate as before;
- ``optimizer.json`` + ``optimizer.safetensors``: ``optimizer.state_dict()``, its tensors (moments, steps) in
  the safetensors file, the rest (``param_groups``, the nesting) in the JSON;
- ``scheduler.json``: ``scheduler.state_dict()`` (transformers' LambdaLR keeps only numbers there: its lambdas
  are ``functools.partial`` objects, stored as their empty ``__dict__``);
- ``scaler.json``: the fp16 GradScaler's numbers, when there is one;
- ``random_states_<rank>.json`` + ``.safetensors``, one pair per rank: python ``random``, numpy, the torch CPU
  generator, every device generator accelerate saves (CUDA, XPU, ...) and ``accelerator.step`` (which
  decides where gradient accumulation syncs).

Not saved, as in accelerate: the DataLoader's own generator (accelerate's seedable sampler is reseeded from
``data_seed + epoch``, and the loop restores the position with ``set_epoch`` + ``skip_first_batches``). Its
``sampler.bin`` is written only for an ``IterableDatasetShard`` whose sampler is a ``SeedableRandomSampler``,
which a DataLoader over an iterable dataset never has. Objects accelerate would save with pickle but this
module cannot (``register_for_checkpointing``, a stateful DataLoader) are refused with an error.

Files ``_i``-suffixed for the second and later model/optimizer/scheduler, as accelerate names them.
"""

import json
import logging
import os
import random

import numpy as np
import torch

logger = logging.getLogger(__name__)

UNSHARDED = ("NO", "MULTI_CPU", "MULTI_GPU")
DEVICE_RNGS = ("cuda", "xpu", "mlu", "sdaa", "musa", "hpu", "neuron")  # the device generators accelerate saves
_MARKERS = ("__tensor__", "__ndarray__", "__tuple__", "__items__")


def is_unsharded(accelerator) -> bool:
    """Whether this module handles the accelerator's state (else FSDP/DeepSpeed/...: their own formats)."""
    return accelerator.distributed_type.value in UNSHARDED


def save_training_state(accelerator, folder: str) -> None:
    """Write the state of every object ``accelerator.prepare`` returned into ``folder``; call on every rank.

    The objects come from the accelerator's own lists (``_models``, ``_optimizers``, ...), as ``save_state``
    takes them, so both formats save the same things."""
    from accelerate.utils import save

    _check_supported(accelerator)
    on_each_node = accelerator.project_configuration.save_on_each_node
    writes = accelerator.is_local_main_process if on_each_node else accelerator.is_main_process
    for i, model in enumerate(accelerator._models):
        state = accelerator.get_state_dict(model, unwrap=False)
        save(state, os.path.join(folder, _name("model", i) + ".safetensors"), on_each_node, safe_serialization=True)
    if writes:
        for i, optimizer in enumerate(accelerator._optimizers):
            write_state(folder, _name("optimizer", i), optimizer.state_dict())
        for i, scheduler in enumerate(accelerator._schedulers):
            write_state(folder, _name("scheduler", i), scheduler.state_dict())
        if accelerator.scaler is not None:
            write_state(folder, "scaler", accelerator.scaler.state_dict())
    write_state(folder, f"random_states_{accelerator.process_index}", _rng_states(accelerator.step))


def load_training_state(accelerator, folder: str) -> None:
    """Restore what ``save_training_state`` wrote into the prepared objects (same order of ``prepare``)."""
    from safetensors.torch import load_model

    _check_supported(accelerator)
    for i, model in enumerate(accelerator._models):
        path = os.path.join(folder, _name("model", i) + ".safetensors")
        if not os.path.isfile(path):
            raise ValueError(f"{folder} has no {os.path.basename(path)}: not a checkpoint of this run's models")
        load_model(model, path, device="cpu")  # copied into the parameters, wherever they live
    for i, optimizer in enumerate(accelerator._optimizers):
        optimizer.load_state_dict(read_state(folder, _name("optimizer", i)))
    for i, scheduler in enumerate(accelerator._schedulers):
        scheduler.load_state_dict(read_state(folder, _name("scheduler", i)))
    if accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(read_state(folder, "scaler"))
    name = f"random_states_{accelerator.process_index}"
    if os.path.isfile(os.path.join(folder, name + ".json")):
        accelerator.step = _set_rng_states(read_state(folder, name))
    else:  # e.g. relaunched with more processes than saved: accelerate goes on too
        logger.warning("%s has no %s.json: the random states of rank %d are not restored", folder, name,
                       accelerator.process_index)


def write_state(folder: str, name: str, obj) -> None:
    """``obj`` (nested dicts/lists/tuples of tensors, arrays and JSON scalars) as ``name.json``, its tensors in
    ``name.safetensors`` (only when it has any)."""
    from safetensors.torch import save_file

    tensors = {}
    encoded = _encode(obj, tensors, name)
    if tensors:
        save_file(tensors, os.path.join(folder, name + ".safetensors"), metadata={"format": "pt"})
    with open(os.path.join(folder, name + ".json"), "w") as f:
        json.dump(encoded, f)


def read_state(folder: str, name: str):
    """The object ``write_state(folder, name, obj)`` stored, tensors on the CPU."""
    from safetensors.torch import load_file

    path = os.path.join(folder, name + ".json")
    if not os.path.isfile(path):
        raise ValueError(f"{folder} has no {name}.json: not a checkpoint written by save_checkpoint for an "
                         "unsharded run (an accelerate save_state folder holds pickles, which are not loaded)")
    with open(path) as f:
        encoded = json.load(f)
    tensors_path = os.path.join(folder, name + ".safetensors")
    tensors = load_file(tensors_path) if os.path.isfile(tensors_path) else {}
    return _decode(encoded, tensors, name)


def _encode(obj, tensors: dict, path: str):
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        tensor = obj.detach().cpu() if isinstance(obj, torch.Tensor) else torch.from_numpy(obj)
        tensors[path] = tensor.contiguous()
        return {"__tensor__" if isinstance(obj, torch.Tensor) else "__ndarray__": path}
    if isinstance(obj, (list, tuple)):
        items = [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if isinstance(obj, dict):
        if all(isinstance(k, str) and k not in _MARKERS for k in obj):
            return {k: _encode(v, tensors, f"{path}.{k}") for k, v in obj.items()}
        return {"__items__": [[_encode(k, tensors, f"{path}.key{i}"), _encode(v, tensors, f"{path}.{k}")]
                              for i, (k, v) in enumerate(obj.items())]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"{path}: a {type(obj).__name__} cannot be stored as JSON or safetensors")


def _decode(obj, tensors: dict, name: str):
    if isinstance(obj, list):
        return [_decode(v, tensors, name) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) == 1 and next(iter(obj)) in _MARKERS:
        (marker, value), = obj.items()
        if marker in ("__tensor__", "__ndarray__"):
            if value not in tensors:
                raise ValueError(f"{name}.safetensors has no tensor {value!r}, which {name}.json refers to")
            return tensors[value] if marker == "__tensor__" else tensors[value].numpy()
        if marker == "__tuple__":
            return tuple(_decode(v, tensors, name) for v in value)
        return {_decode(k, tensors, name): _decode(v, tensors, name) for k, v in value}
    return {k: _decode(v, tensors, name) for k, v in obj.items()}


def _rng_states(step: int) -> dict:
    import accelerate.utils

    states = {"step": step, "python": random.getstate(), "numpy": np.random.get_state(),
              "torch": torch.get_rng_state()}
    for device in DEVICE_RNGS:
        if getattr(accelerate.utils, f"is_{device}_available")():
            states[device] = getattr(torch, device).get_rng_state_all()
    return states


def _set_rng_states(states: dict) -> int:
    """Restore the generators; returns the saved ``accelerator.step``."""
    import accelerate.utils

    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    for device in DEVICE_RNGS:
        if getattr(accelerate.utils, f"is_{device}_available")():
            if device in states:
                getattr(torch, device).set_rng_state_all(states[device])
            else:
                logger.warning("the checkpoint has no %s random states (saved without that device)", device)
    return states["step"]


def _name(base: str, index: int) -> str:
    return base if index == 0 else f"{base}_{index}"


def _check_supported(accelerator) -> None:
    if accelerator._custom_objects:
        raise ValueError("objects registered with accelerator.register_for_checkpointing are saved by accelerate "
                         "with pickle: keep such counters in save_checkpoint's manifest state instead")
    if any(getattr(dl, "use_stateful_dataloader", False) for dl in accelerator._dataloaders):
        raise ValueError("a stateful DataLoader (use_stateful_dataloader=True) has a state accelerate pickles; "
                         "save_checkpoint restores the data position with set_epoch + skip_first_batches instead")
