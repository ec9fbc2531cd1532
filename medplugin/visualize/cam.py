"""Grad-CAM for 2D, 3D and 2.5D classifiers, single- and multi-label, with hooks whose lifetime is owned.

Selvaraju et al. 2017, "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based Localization".
The hook handling follows pytorch-grad-cam's ``ActivationsAndGradients``: a hook is stored, used for one
forward pass, and removed; the network is never left changed.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ActivationCapture", "CapturedGradCAM", "cell_centres", "grad_cam_maps", "normalize_maps", "flat_map_warning",
]

Grid = tuple[tuple[float, float], ...]
"""Per spatial axis ``(offset, step)``: the centre of a feature map's cell ``j`` lies on input pixel
``offset + step * j`` (pixel ``p`` covers ``[p - 0.5, p + 0.5]``)."""


def flat_map_warning(feature_size: Sequence[int], layer, input_shape: Sequence[int]) -> str | None:
    """Why maps of ``layer`` cannot localise anything, or ``None`` when they can.

    A layer whose output is one cell (e.g. ResNet's ``layer4`` at 32 px) gives a constant map per sample, which
    :func:`normalize_maps` turns into all zeros: every overlay is blank and a peak taken with ``argmax`` is pixel
    (0, 0). The text names the layer, its map size and the input size. A 2.5D network's per-slice maps (fewer
    spatial dimensions than the input) still vary across slices: no warning.

    Args:
        feature_size: spatial size of the layer's output (:attr:`CapturedGradCAM.feature_size`).
        layer: the layer's name, for the text.
        input_shape: spatial size of the network input.
    """
    spatial = tuple(int(v) for v in feature_size)
    if not spatial or len(spatial) != len(input_shape) or any(v > 1 for v in spatial):
        return None
    size = "x".join(str(int(v)) for v in input_shape)
    return (f"Grad-CAM layer {layer!r} outputs a {'x'.join(map(str, spatial))} map for {size} inputs: every map is "
            "flat (all zeros), nothing is localised; use a larger image_size or an earlier cam_layer.")


class ActivationCapture:
    """Context manager that records the output of one module during forward passes.

    The recorded activation keeps its autograd graph, so gradients of any later output with respect to it
    can be taken with ``torch.autograd.grad`` (one cheap partial backward, no hooks on the backward pass).
    A frozen module's output is made to require grad so Grad-CAM works on frozen backbones too.

    Args:
        network: the model.
        layer: the module itself, or its dotted name in ``network.named_modules()``.
    """

    def __init__(self, network: nn.Module, layer: str | nn.Module):
        self.network = network
        self.module = find_module(network, layer)
        self.activation: torch.Tensor | None = None
        self._handle = None

    def _hook(self, module, inputs, output):
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"the CAM layer must output a tensor, got {type(output).__name__}.")
        if torch.is_grad_enabled() and not output.requires_grad:
            output = output.detach().requires_grad_(True)
        self.activation = output
        return output

    def __enter__(self) -> ActivationCapture:
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove the hook (idempotent)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


def find_module(network: nn.Module, layer: str | nn.Module) -> nn.Module:
    """The module ``layer`` (itself, or its dotted name in ``network``); a wrong name lists similar ones."""
    if isinstance(layer, nn.Module):
        return layer
    modules = dict(network.named_modules())
    if layer not in modules:
        near = [n for n in modules if n and n.split(".")[-1] == str(layer).split(".")[-1]][:5]
        raise ValueError(f"layer {layer!r} not found in {type(network).__name__}; similar names: {near}.")
    return modules[layer]


def normalize_maps(cams: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale each map of a ``(B, 1, *spatial)`` batch to [0, 1] independently (a flat map becomes 0)."""
    flat = cams.flatten(1)
    lo = flat.min(dim=1, keepdim=True).values
    hi = flat.max(dim=1, keepdim=True).values
    out = (flat - lo) / (hi - lo).clamp_min(eps)
    return out.view_as(cams)


def grad_cam_maps(
    logits: torch.Tensor,
    activation: torch.Tensor,
    samples: Sequence[int],
    classes: Sequence[int],
    output_size: Sequence[int] | None = None,
    retain_graph: bool = False,
    grid: Grid | None = None,
) -> torch.Tensor:
    """Grad-CAM maps of ``(samples[k], classes[k])`` pairs from logits and the activation of the same forward pass.

    Pairs are grouped so that each partial backward takes at most one class per sample (a sample may be asked
    for several classes, as in multi-label explanations).

    Args:
        logits: ``(B, num_classes)`` network output, still attached to its graph.
        activation: ``(B, K, *spatial)`` feature maps, attached to the same graph; or ``(B * S, K, h, w)`` per-slice
            maps of a 2.5D network (slices of volume ``b`` in rows ``b * S : (b + 1) * S``), which give
            ``(1, S, h, w)`` per-slice maps per volume, weighted and scaled per volume.
        samples: batch index of each pair.
        classes: class of each pair.
        output_size: spatial size to upsample the maps to (the input size); ``None`` keeps the feature size.
        retain_graph: keep the graph after the last backward (for later calls).
        grid: where the layer's cells lie on the input (:func:`cell_centres`); each map is resampled so that a cell's
            value lands on its receptive field's centre. ``None``: the cells tile the input evenly (bilinear
            ``align_corners=False``), which is right for a grid whose cells are centred on their tiles (VGG,
            DenseNet within a pixel or two) but puts a ResNet's map ``(stride - 1) / 2`` pixels down and right
            of where its cells look.

    Returns:
        ``(K, 1, *output_size)`` maps in [0, 1], detached.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be (batch, classes), got shape {tuple(logits.shape)}.")
    b, n_classes = logits.shape
    pairs = [(int(i), int(c)) for i, c in zip(samples, classes)]
    if len(pairs) != len(samples) or len(samples) != len(classes):
        raise ValueError(f"samples and labels differ in length: {len(samples)} vs {len(classes)}.")
    for i, c in pairs:
        if not (0 <= i < b and 0 <= c < n_classes):
            raise ValueError(f"pair (sample {i}, label {c}) outside the batch of {b} x {n_classes} labels.")
    if activation.shape[0] != b and activation.shape[0] % b:
        raise ValueError(f"activation batch {activation.shape[0]} is not a multiple of the logits' batch {b}.")
    out: list[torch.Tensor | None] = [None] * len(pairs)
    todo = list(range(len(pairs)))
    with torch.enable_grad():  # handlers may run inside the evaluator's no_grad context
        while todo:
            taken, rest, used = [], [], set()
            for k in todo:
                (taken if pairs[k][0] not in used else rest).append(k)
                used.add(pairs[k][0])
            idx = torch.tensor([pairs[k][0] for k in taken], device=logits.device)
            cls = torch.tensor([pairs[k][1] for k in taken], device=logits.device)
            (grads,) = torch.autograd.grad(logits[idx, cls].sum(), activation, retain_graph=retain_graph or bool(rest))
            act = activation.detach()
            if act.shape[0] != b:  # 2.5D: (B * S, K, h, w) -> (B, K, S, h, w): channel weights from the whole volume
                s = act.shape[0] // b
                act = act.reshape(b, s, *act.shape[1:]).transpose(1, 2)
                grads = grads.reshape(b, s, *grads.shape[1:]).transpose(1, 2)
            spatial = tuple(range(2, act.dim()))
            weights = grads[idx].float().mean(dim=spatial, keepdim=True)
            maps = F.relu((weights * act[idx].float()).sum(dim=1, keepdim=True))
            # flat on the layer's grid (a 1x1 layer, or all zero after the ReLU): nothing to show. Upsampling a
            # constant map leaves float rounding (~1e-7 of its value) that min-max scaling would blow up into a
            # pattern of 0, 0.5 and 1, so flatness is decided here, before the upsampling.
            flat = maps.flatten(1).amax(1) <= maps.flatten(1).amin(1)
            if output_size is not None and grid is not None and len(grid) == len(output_size) in (2, 3):
                maps = _resample(maps, tuple(output_size), grid)
            elif output_size is not None and tuple(maps.shape[2:]) != tuple(output_size):
                mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(output_size)]
                maps = F.interpolate(maps, size=tuple(output_size), mode=mode, align_corners=False)
            maps = normalize_maps(maps)
            maps[flat] = 0.0
            for j, k in enumerate(taken):
                out[k] = maps[j]
            todo = rest
    if not pairs:
        size = tuple(output_size) if output_size is not None else tuple(activation.shape[2:])
        return torch.zeros((0, 1, *size))
    return torch.stack(out)  # type: ignore[arg-type]


def _resample(maps: torch.Tensor, size: tuple[int, ...], grid: Grid) -> torch.Tensor:
    """``(K, 1, *cells)`` maps on the input's ``size``: input pixel ``p`` of an axis takes the (multi)linear
    interpolation of the cells at ``(p - offset) / step``, the edge cells' values beyond them."""
    coords = []
    for n, cells, (offset, step) in zip(size, maps.shape[2:], grid):
        u = (torch.arange(n, dtype=torch.float32, device=maps.device) - offset) / step  # cell coordinate
        coords.append(u * 2 / (cells - 1) - 1 if cells > 1 else torch.zeros_like(u))  # align_corners=True frame
    mesh = torch.meshgrid(*coords, indexing="ij")
    g = torch.stack(mesh[::-1], dim=-1)  # grid_sample wants (x, y[, z]): the last axis first
    g = g.unsqueeze(0).expand(maps.shape[0], *g.shape)
    return F.grid_sample(maps, g, mode="bilinear", padding_mode="border", align_corners=True)


_GRIDS: weakref.WeakKeyDictionary[nn.Module, dict[tuple, Grid | None]] = weakref.WeakKeyDictionary()


def cell_centres(network: nn.Module, layer: str | nn.Module, input_shape: Sequence[int]) -> Grid | None:
    """Where the cells of ``layer``'s output lie on an input of ``input_shape`` ``(B, C, *spatial)``.

    Every cell looks at a window of the input (its receptive field) centred on ``offset + step * j``; the offset
    depends on the kernel and padding of every convolution and pooling before the layer (a torchvision ResNet's cell
    ``j`` is centred on pixel ``stride * j``, a DenseNet's third block's on ``16 * j + 6``), not on the input size.
    Read off the network itself: one forward pass of a zero input (eval mode, no random numbers) records the
    autograd graph, and the path from the layer's output back to the input is walked; each convolution and pooling
    on it maps a cell ``j`` to the centre ``stride * j + (kernel - 1) * dilation / 2 - padding`` of its window.
    Branches (a ResNet's downsampling shortcut, a DenseNet's concatenations) share that geometry, so one path
    tells. Cached per network, layer and input shape.

    Returns:
        one ``(offset, step)`` per spatial axis, or ``None`` (the cells are then taken to tile the input evenly)
        when the path holds an operation whose geometry is not known here (an upsampling, an adaptive pooling).
        For a 2.5D network (a 2-D backbone run on every slice of ``(1, [C,] S, H, W)``, maps ``(S, K, h, w)``)
        the grid of the two in-plane axes.
    """
    shape = tuple(int(v) for v in input_shape)
    key = (str(layer) if not isinstance(layer, nn.Module) else id(layer), shape)
    known = _GRIDS.setdefault(network, {})
    if key not in known:
        known[key] = _graph_grid(network, layer, shape)
    return known[key]


def _graph_grid(network: nn.Module, layer, shape: tuple[int, ...]) -> Grid | None:
    try:
        param = next(network.parameters())
        device, dtype = param.device, (param.dtype if param.is_floating_point() else torch.float32)
    except StopIteration:
        device, dtype = torch.device("cpu"), torch.float32
    was_training = network.training
    network.eval()
    try:
        x = torch.zeros((1, *shape[1:]), device=device, dtype=dtype, requires_grad=True)
        with torch.enable_grad(), ActivationCapture(network, layer) as cap:
            network(x)
        act = cap.activation
    except RuntimeError:  # a network tied to another batch size or device: the cells tile the input evenly
        return None
    finally:
        network.train(was_training)
    if act is None or act.grad_fn is None:
        return None
    if act.shape[0] == 1 and act.dim() == x.dim():
        return _walk(act.grad_fn, x, len(shape) - 2)
    if act.dim() == 4 and len(shape) in (4, 5):  # 2.5D: one 2-D map per slice, (S, K, h, w): the in-plane grid
        return _walk(act.grad_fn, x, 2)
    return None


def _op_geometry(node, dims: int) -> list[tuple[float, float]] | None:
    """``(stride, offset)`` per axis of one autograd node: a convolution or pooling maps its output cell ``j`` to
    input centre ``stride * j + offset``; ``[]`` for an operation that moves nothing (pointwise, concatenation,
    addition, normalisation); ``None`` for one whose geometry is unknown (interpolation, adaptive pooling)."""
    name = type(node).__name__
    if name.startswith("Convolution"):
        if getattr(node, "_saved_transposed", False):
            return None
        kernel = tuple(node._saved_weight.shape[2:]) if hasattr(node, "_saved_weight") else None
        stride, padding, dilation = node._saved_stride, node._saved_padding, node._saved_dilation
    elif "Pool" in name and "Adaptive" not in name:
        kernel, stride = tuple(node._saved_kernel_size), tuple(node._saved_stride) or tuple(node._saved_kernel_size)
        padding = tuple(node._saved_padding)
        dilation = tuple(getattr(node, "_saved_dilation", ())) or (1,) * len(kernel)
    elif any(t in name for t in ("Upsample", "Interpolat", "Adaptive", "Unfold", "Fold", "Pixel", "Roll", "Flip")):
        return None
    else:
        return []
    if kernel is None or not (len(kernel) == len(stride) == len(padding) == len(dilation) == dims):
        return None
    return [(float(s), (k - 1) * d / 2 - p) for k, s, p, d in zip(kernel, stride, padding, dilation)]


def _walk(start, x: torch.Tensor, dims: int) -> Grid | None:
    """Depth-first from the layer's node to the input's, composing the geometry of the nodes on the first path
    found (see :func:`cell_centres`)."""
    stack = [(start, ((0.0, 1.0),) * dims)]  # node, (offset, step) of the layer's cells in that node's output
    seen: set[int] = set()
    while stack:
        node, grid = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if type(node).__name__ == "AccumulateGrad":
            if node.variable is x:
                return tuple((float(o), float(s)) for o, s in grid)
            continue
        geometry = _op_geometry(node, dims)
        if geometry is None:
            continue  # this path cannot be followed; another may
        if geometry:
            grid = tuple((st * o + off, st * s) for (o, s), (st, off) in zip(grid, geometry))
        stack.extend((nxt, grid) for nxt, _ in node.next_functions)
    return None


class CapturedGradCAM:
    """Grad-CAM of a classifier (2D, 3D or 2.5D; single- or multi-label) from one captured forward pass.

    :meth:`forward` runs the network once with a temporary hook on ``layer`` (removed on return) and keeps the
    logits and the layer's activation with their graph; :meth:`maps` then costs one partial backward from the
    chosen logits to that layer per group of (sample, class) pairs. Calling the object does both for one batch,
    with the network in eval mode for the call (its mode is restored); its parameters' gradients are untouched.

    Why not MONAI's ``monai.visualize.GradCAM``: it runs its own forward pass and a full backward through the
    network, so explaining an evaluation batch would run the network twice; here the evaluator's own forward
    (:class:`medplugin.inferers.GradCAMInferer`) is reused and the backward stops at the CAM layer. MONAI's also
    registers hooks at construction and never removes them; here each hook lives for one forward pass.

    Args:
        network: a classifier returning ``(B, num_classes)`` logits.
        layer: the module (or its dotted name) whose output is weighted, e.g. ``"layer4"``.

    Example::

        cam = CapturedGradCAM(net, "layer4")
        maps, logits = cam(images)            # maps: (B, 1, H, W) in [0, 1], of the predicted classes
    """

    def __init__(self, network: nn.Module, layer: str | nn.Module):
        self.network = network
        self.layer = layer
        find_module(network, layer)  # fail early on a wrong name
        self._last: tuple[torch.Tensor, torch.Tensor, tuple[int, ...]] | None = None

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """Run the network on ``x`` with gradients up to ``layer`` kept; return the detached logits.

        A forward pass that does not run ``layer`` leaves nothing to explain (:attr:`ready` is ``False``).
        """
        self._last = None
        with torch.enable_grad(), ActivationCapture(self.network, self.layer) as cap:
            logits = self.network(x, *args, **kwargs)
        if cap.activation is not None:
            self._last = (logits, cap.activation, tuple(x.shape[2:]))
            self._shape = tuple(x.shape)
        return logits.detach()

    @property
    def ready(self) -> bool:
        """Whether a forward pass is kept for :meth:`maps`."""
        return self._last is not None

    @property
    def feature_size(self) -> tuple[int, ...] | None:
        """Spatial size of ``layer``'s output in the kept forward pass (``None`` when none is kept)."""
        return None if self._last is None else tuple(int(v) for v in self._last[1].shape[2:])

    def maps(self, samples: Sequence[int] | None = None, classes: Sequence[int] | int | None = None,
             keep: bool = True) -> torch.Tensor:
        """Maps ``(K, 1, *input_spatial)`` in [0, 1] of the last forward pass.

        Args:
            samples: batch indices (default: every sample once).
            classes: one class per sample (``None`` entries: that sample's predicted class), one class for all,
                or ``None`` (each sample's predicted class).
            keep: keep the graph for further calls; ``False`` frees it.
        """
        if self._last is None:
            raise RuntimeError("no batch to explain: call the inferer first (with enabled=True).")
        logits, activation, size = self._last
        samples = list(range(logits.shape[0])) if samples is None else [int(i) for i in samples]
        bad = [i for i in samples if not 0 <= i < logits.shape[0]]
        if bad:
            raise ValueError(f"samples {bad} outside the batch of {logits.shape[0]} x {logits.shape[1]} labels.")
        predicted = logits.detach()[samples].argmax(1).tolist() if samples else []
        if classes is None:
            classes = predicted
        elif isinstance(classes, int):
            classes = [classes] * len(samples)
        else:
            classes = classes.reshape(-1).tolist() if torch.is_tensor(classes) else list(classes)
            if len(classes) != len(samples):
                raise ValueError(f"samples and classes differ in length: {len(samples)} samples, {len(classes)} "
                                 "classes (class_idx needs one class per sample).")
            classes = [p if c is None else int(c) for c, p in zip(classes, predicted)]
        grid = cell_centres(self.network, self.layer, self._shape)
        if grid is not None and activation.shape[0] != logits.shape[0]:  # 2.5D: one map per slice, in-plane cells
            grid = ((0.0, 1.0), *grid) if len(grid) == 2 and len(size) == 3 else None
        try:
            return grad_cam_maps(logits, activation, samples, classes, size, retain_graph=keep, grid=grid)
        finally:
            if not keep:
                self.release()

    def release(self) -> None:
        """Free the graph of the last forward pass."""
        self._last = None

    def __call__(
        self, x: torch.Tensor, class_idx: Sequence[int] | int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(maps, logits)`` for input ``x`` of shape ``(B, C, *spatial)`` (``class_idx`` as :meth:`maps`)."""
        was_training = self.network.training
        self.network.eval()
        try:
            logits = self.forward(x)
            if not self.ready:
                raise RuntimeError(f"layer {self.layer!r} was not run by the forward pass.")
            maps = self.maps(classes=class_idx, keep=False)
        finally:
            self.network.train(was_training)
        return maps, logits
