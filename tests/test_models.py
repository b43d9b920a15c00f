"""The hand-written BERT must compute what Hugging Face's BertModel computes."""

import numpy as np
import torch
from transformers import BertModel

from sidyp_prod.encoder import configure_tokenizer, load_pretrained, tokenize
from sidyp_prod.models import (
    BertShape,
    LayerStack,
    Trunk,
    additive_attention_mask,
    load_bert_weights,
)


def test_trunk_and_top_match_hugging_face(tiny_encoder):
    pretrained = load_pretrained(str(tiny_encoder))
    shape = BertShape.from_config(pretrained.config)
    trunk, top = Trunk(shape, 1).eval(), LayerStack(shape, 1).eval()
    load_bert_weights(trunk, top, {k: torch.from_numpy(v) for k, v in pretrained.weights.items()})
    tokenizer = configure_tokenizer(pretrained.tokenizer, 32)
    ids, mask = tokenize(tokenizer, ["the song and the band", "oven"])
    ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
    with torch.no_grad():
        ours = top(trunk(ids_t, mask_t), additive_attention_mask(mask_t))
        reference = BertModel.from_pretrained(tiny_encoder).eval()(
            input_ids=ids_t, attention_mask=mask_t
        ).last_hidden_state
    valid = mask.astype(bool)
    np.testing.assert_allclose(ours.numpy()[valid], reference.numpy()[valid], atol=1e-4)
