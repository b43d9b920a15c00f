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


def test_reverse_process_module_computes_the_numpy_reference():
    """The exported ReverseProcess must run the same chain as diffusion.reverse_process."""
    from sidyp_prod.diffusion import ReverseSchedule, reverse_process
    from sidyp_prod.models import DenoiserEnsemble, ReverseProcess

    torch.manual_seed(0)
    branches, classes, width, rows = 2, 4, 8, 5
    ensemble = DenoiserEnsemble(branches, classes, 6, width, 800).eval()
    schedule = ReverseSchedule.build(800, 10, "spaced")
    module = ReverseProcess(ensemble, schedule.timesteps, schedule.alpha_bar, 5.0)
    rng = np.random.default_rng(1)
    noise = rng.standard_normal((rows, 10, branches, classes)).astype(np.float32)
    cond = rng.standard_normal((rows, branches, width)).astype(np.float32)
    y = rng.standard_normal((rows, classes)).astype(np.float32)
    cond_t = torch.from_numpy(cond).transpose(0, 1)
    with torch.no_grad():
        ours = module(torch.from_numpy(noise), torch.from_numpy(cond), torch.from_numpy(y))

        def step(x: np.ndarray, t: np.ndarray) -> np.ndarray:
            return ensemble.step(torch.from_numpy(x), torch.from_numpy(t[0]), cond_t,
                                 torch.from_numpy(y)).numpy()

        reference = reverse_process(step, noise.transpose(1, 2, 0, 3), schedule, 5.0)
    np.testing.assert_allclose(ours.numpy(), reference.transpose(1, 0, 2), atol=1e-5)


def test_encoder_batches_pad_each_row_to_a_width_of_its_own():
    from sidyp_prod.encoder import WIDTH_STEP, padded_width, width_batches

    assert [padded_width(n) for n in (1, 8, 9, 16, 17)] == [8, 8, 16, 16, 24]
    lengths = [3, 17, 9, 8, 30, 2, 12, 16, 5]
    batches = width_batches(lengths, batch_size=2)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    for batch in batches:  # one width per batch, at most batch_size rows
        assert len({padded_width(lengths[i]) for i in batch}) == 1 and len(batch) <= 2
    widths = [padded_width(lengths[b[0]]) for b in batches]
    assert widths == sorted(widths) and all(w % WIDTH_STEP == 0 for w in widths)
