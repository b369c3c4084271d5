"""RoBERTa, XLM-R and CamemBERT: BERT's layout with offset positions."""

from __future__ import annotations

from torch import Tensor

from autoprompt_search.backbones.bert import BertBackbone


class RobertaBackbone(BertBackbone):
    """RoBERTa and XLM-R: BERT layout, positions offset by padding_idx + 1, no NSP pooler."""

    model_types = ("roberta", "xlm-roberta", "camembert")

    @property
    def position_offset(self) -> int:  # type: ignore[override]
        return int(self.config.pad_token_id) + 1

    def pool(self, h: Tensor) -> Tensor:
        return h
