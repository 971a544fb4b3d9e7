"""timm models behind the backbone contract.

``forward_features`` gives the final map (NCHW for CNNs and MaxViT, NHWC for
SwinV2, tokens for MViTv2) and ``forward_head(pre_logits=True)`` the pooled
summary with the model's own head norm/pooling, so the summary is what timm
would feed its classifier.
"""

from __future__ import annotations

from typing import Literal

import timm
import torch

from zoo.backbone import Backbone, BackboneOutput, SizeRule, as_hw
from zoo.errors import ResolutionError, WeightsNotFoundError

Layout = Literal["nchw", "nhwc", "tokens"]


class TimmBackbone(Backbone):
    """A timm model without classifier, returning :class:`BackboneOutput`.

    Args:
        name: registry name (for messages).
        timm_name: the timm architecture.
        layout: how ``forward_features`` lays out its output.
        size_rule: which input sizes the architecture accepts.
        resolution: the input size to build for (models whose buffers depend
            on it, i.e. SwinV2, MaxViT, MViTv2, take it as ``img_size``).
        sized_at_build: pass ``img_size`` to timm at construction.
        pretrained_file: a local checkpoint for timm to load (never the hub).
        **timm_kwargs: anything else for ``timm.create_model``.
    """

    def __init__(
        self,
        name: str,
        timm_name: str,
        layout: Layout = "nchw",
        size_rule: SizeRule = SizeRule(),
        resolution: int | tuple[int, int] = 224,
        sized_at_build: bool = False,
        pretrained_file: str | None = None,
        **timm_kwargs,
    ) -> None:
        super().__init__()
        self.name = name
        self.timm_name = timm_name
        self.layout = layout
        self.size_rule = size_rule
        height, width = as_hw(resolution)
        self.check_resolution(height, width)
        kwargs = dict(timm_kwargs)
        if sized_at_build:
            kwargs["img_size"] = (height, width)
        if pretrained_file:
            kwargs["pretrained_cfg_overlay"] = dict(file=str(pretrained_file))
        try:
            self.model = timm.create_model(timm_name, pretrained=bool(pretrained_file), num_classes=0, **kwargs)
        except (FileNotFoundError, RuntimeError) as err:
            if pretrained_file:
                raise WeightsNotFoundError(f"cannot load weights for {name} from {pretrained_file}: {err}") from err
            raise
        self._built_size = (height, width) if sized_at_build else None
        self.feature_dim = int(self.model.num_features)
        self.summary_dim = int(getattr(self.model, "head_hidden_size", None) or self.model.num_features)
        info = getattr(self.model, "feature_info", None)
        self.stride = int(info[-1]["reduction"]) if info else 32

    def first_layer_parameters(self) -> list[torch.nn.Parameter]:
        return [next(self.model.parameters())]

    def _adapt_input_size(self, height: int, width: int) -> None:
        """Re-size models with size-dependent buffers (SwinV2 masks, MaxViT windows)."""
        if self._built_size is None or self._built_size == (height, width):
            return
        self.check_resolution(height, width)
        if hasattr(self.model, "set_input_size"):
            self.model.set_input_size(img_size=(height, width))
        self._built_size = (height, width)

    def forward(self, x: torch.Tensor) -> BackboneOutput:
        height, width = x.shape[-2:]
        if not torch.compiler.is_compiling():
            self._adapt_input_size(int(height), int(width))
        feats = self.model.forward_features(x)
        summary = self.model.forward_head(feats, pre_logits=True)
        if self.layout == "nhwc":
            feats = feats.permute(0, 3, 1, 2)
        elif self.layout == "tokens":
            grid_h, grid_w = self.feature_size(int(height), int(width))
            if feats.shape[1] != grid_h * grid_w:  # a class token leads
                feats = feats[:, -grid_h * grid_w :]
            feats = feats.transpose(1, 2).reshape(feats.shape[0], -1, grid_h, grid_w)
        if summary.ndim != 2:
            raise ResolutionError(f"{self.name}: unexpected summary shape {tuple(summary.shape)}")
        return BackboneOutput(summary, feats)
