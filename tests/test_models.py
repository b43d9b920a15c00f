"""The encoder built on transformers' modules must compute what the checkpoint's own model
computes, for every supported family; the denoiser's exported process what numpy computes."""

import numpy as np
import pytest
import torch

from sidyp_prod.encoder import configure_tokenizer, tokenize
from sidyp_prod.pretrained import load_pretrained, read_pooling
from sidyp_prod.transformer import EncoderSlice, Trunk

from synthetic import FAMILIES, make_tiny_encoder


@pytest.mark.parametrize("family", FAMILIES)
def test_trunk_and_top_slices_match_the_checkpoints_own_model(tmp_path, family):
    directory = make_tiny_encoder(tmp_path / family, hidden=32, layers=3, family=family)
    pretrained = load_pretrained(str(directory))
    assert pretrained.family == family
    tokenizer = configure_tokenizer(pretrained.tokenizer, 32, pretrained.pad_token)
    ids, mask = tokenize(tokenizer, ["the song and the band played", "oven"])
    ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
    for split in (0, 1, 3):  # all trainable, one frozen layer, all frozen
        trunk = Trunk(pretrained.model, split).eval()
        top = EncoderSlice(pretrained.model, split, 3).eval()
        with torch.no_grad():
            ours = top(trunk(ids_t, mask_t), mask_t)
            reference = pretrained.model(input_ids=ids_t, attention_mask=mask_t).last_hidden_state
        valid = mask.astype(bool)
        np.testing.assert_allclose(ours.numpy()[valid], reference.numpy()[valid], atol=1e-5)


def test_activation_comes_from_the_checkpoint(tmp_path):
    """A checkpoint whose hidden_act is not GELU computes with its own activation."""
    directory = make_tiny_encoder(tmp_path / "enc", hidden=32, layers=2, family="xlm-roberta")
    pretrained = load_pretrained(str(directory))
    assert pretrained.config.hidden_act == "relu"
    layer = EncoderSlice(pretrained.model, 0, 2).layers[0]
    assert "relu" in type(layer.intermediate.intermediate_act_fn).__name__.lower()


def test_pooling_follows_the_sentence_transformers_configuration(tmp_path):
    plain = make_tiny_encoder(tmp_path / "plain")
    assert read_pooling(plain).mode == "mean"
    st = make_tiny_encoder(tmp_path / "st", sentence_transformers=True)
    pooling = read_pooling(st)
    assert (pooling.mode, pooling.normalize) == ("cls", True)


def test_an_unsupported_family_or_missing_encoder_is_refused(tmp_path):
    from transformers import DistilBertConfig, DistilBertModel

    DistilBertModel(DistilBertConfig(vocab_size=50, dim=16, n_layers=1, n_heads=2,
                                     hidden_dim=32)).save_pretrained(tmp_path / "distil")
    with pytest.raises(ValueError, match="model_type 'distilbert' is not supported"):
        load_pretrained(str(tmp_path / "distil"))
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        load_pretrained("no-such-org/no-such-model")


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


def test_the_knn_embedding_comes_from_the_trunk_or_the_pretrained_top(tmp_path):
    """'trunk' pools the frozen trunk's states (no top slice in the module); 'top' runs the
    pretrained top layers over them (the default)."""
    from sidyp_prod.config import SiDyPConfig
    from sidyp_prod.models import SiDyPEncoder
    from sidyp_prod.transformer import sentence_embedding

    pretrained = load_pretrained(str(make_tiny_encoder(tmp_path / "enc", hidden=32, layers=3)))
    tokenizer = configure_tokenizer(pretrained.tokenizer, 32, pretrained.pad_token)
    ids, mask = (torch.from_numpy(a) for a in tokenize(tokenizer, ["the song played", "oven"]))
    encoders = {e: SiDyPEncoder(pretrained.model, 1, 2, 1, 4, embedding=e).eval()
                for e in ("trunk", "top")}
    assert encoders["trunk"].sentence_top is None and encoders["top"].sentence_top is not None
    with torch.no_grad():
        trunk_states = Trunk(pretrained.model, 2).eval()(ids, mask)
        top_states = EncoderSlice(pretrained.model, 2, 3).eval()(trunk_states, mask)
        expected = {"trunk": sentence_embedding(trunk_states, mask, "mean"),
                    "top": sentence_embedding(top_states, mask, "mean")}
        for name, encoder in encoders.items():
            np.testing.assert_allclose(encoder(ids, mask)[2].numpy(), expected[name].numpy(),
                                       atol=1e-6)
    assert not np.allclose(expected["trunk"].numpy(), expected["top"].numpy(), atol=1e-3)
    with pytest.raises(ValueError, match="needs frozen layers"):
        SiDyPEncoder(pretrained.model, 3, 2, 1, 4, embedding="trunk")

    assert SiDyPConfig().resolved_knn_embedding(3) == "top"
    assert SiDyPConfig(knn_embedding="trunk").resolved_knn_embedding(3) == "trunk"
    with pytest.raises(ValueError, match="needs frozen layers"):
        SiDyPConfig(trainable_layers=3, knn_embedding="trunk").resolved_knn_embedding(3)
    with pytest.raises(ValueError, match="knn_embedding must be one of"):
        SiDyPConfig(knn_embedding="middle").validate()
    assert SiDyPConfig.from_bundle({}).knn_embedding == "top"  # as bundles did before it
