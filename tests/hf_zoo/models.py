"""A zoo of tiny Hugging Face ``transformers`` models, used unwrapped, for hesskit's tests.

Every factory builds a float64 model in TRAIN mode with its dropout probabilities non-zero
(the config defaults, raised to 0.1 where the default is 0), its loss and one or two
batches ``(inputs, targets)`` whose inputs are a dict of ``forward``'s keyword arguments,
from fixed seeds (the global RNG is left as it was). It returns an :class:`HFCase`.

Each case carries a ``reference_model``: the same architecture built from a copy of the
config with EVERY dropout probability set to 0, loaded with the case model's state and in
the same train/eval mode. The oracles of ``reference.py`` differentiate that twin, so they
never depend on how hesskit switches dropout off.

Things about these models that a curvature library must survive (see also ``notes``):

* GPT-2's ``Conv1D`` layers (weights stored transposed) and ``lm_head`` tied to ``wte``;
* Llama's ``LlamaRMSNorm`` computes in float32 whatever the input dtype, and its eager
  attention (and ViT's) takes the softmax in float32: those models are float64 only in
  name, so their cases carry a looser ``rtol`` (``FLOAT32_CAST_RTOL``);
* BART calls ``nn.functional.dropout`` functionally (no ``nn.Dropout`` module to switch);
* HF ResNet adds its residual in place (``hidden_state += residual``) after train-mode
  BatchNorm;
* BERT's and BART's ``nn.Embedding(padding_idx=pad_token_id)`` with the pad token in the
  data: reverse mode gives the pad row a zero gradient, forward mode (``torch.func.jvp``)
  moves it, so a J v by forward mode is not the transpose of the vjp there;
* HF's own ``labels=`` loss (``ForCausalLMLoss``) casts the logits to float32 and averages
  per batch; the cases use hesskit's losses instead.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
from torch import Tensor, nn

DTYPE = torch.float64
VOCAB = 16
ATTENTION = ("eager", "sdpa")

FLOAT64_RTOL = 1e-8
"""Relative tolerance for two float64 evaluations of the same derivative by different
orders of operations: rounding grows like a few hundred ulps (2.2e-16) per product over
the ~10⁴ operations of these models, far below 1e-8."""

FLOAT32_CAST_RTOL = 1e-6
"""For models that round intermediate values to float32 (unit roundoff 6e-8) inside a
float64 forward: the backward rounds its float64 gradients to float32 at each cast, so two
correct methods whose float64 values differ in the last bits differ by a few float32 ulps
after the cast (measured: 7e-8 on Llama's H v, G v and gradient; 1e-11 on ViT eager)."""

Batch = tuple[dict[str, Tensor], Tensor]


@dataclass
class HFCase:
    """One Hugging Face model with its loss, data and dropout-free twin.

    Attributes:
        name: the test id.
        model: the float64 model, in train mode (eval mode for ``resnet_eval``).
        loss_name: the loss for ``Problem``: ``"CrossEntropyLoss"`` (torch's) or the name of
            a ``hesskit.losses`` class; :attr:`loss` builds it.
        loss_kind: how ``reference.py`` writes the loss by hand: ``"causal_lm"`` (shift by
            one, ignore -100, mean over the tokens of all batches), ``"token"`` (the same
            without the shift) or ``"classification"`` (mean cross-entropy over samples).
        data: one or two batches ``(inputs_dict, targets)``.
        reference_model: the twin with every dropout probability 0 (same state, same mode).
        block: a few parameter names for dense block references (tens of entries).
        rtol: relative tolerance hesskit vs the oracles (float32 casts inside the model
            loosen it; see ``FLOAT32_CAST_RTOL``).
        batch_norm: the model has BatchNorm layers.
        notes: what is unusual about the model.
    """

    name: str
    model: nn.Module
    loss_name: str
    loss_kind: str
    data: list[Batch]
    reference_model: nn.Module
    block: list[str]
    rtol: float = FLOAT64_RTOL
    batch_norm: bool = False
    notes: str = field(default="", repr=False)

    @property
    def loss(self) -> nn.Module:
        """A new loss module (hesskit's losses are looked up only here, so the reference
        tests, which never ask for it, do not depend on hesskit)."""
        if self.loss_name == "CrossEntropyLoss":
            return nn.CrossEntropyLoss()
        import hesskit.losses

        return getattr(hesskit.losses, self.loss_name)()

    @property
    def names(self) -> list[str]:
        """All differentiated parameters in ``named_parameters()`` order (tied weights once)."""
        return [n for n, p in self.model.named_parameters() if p.requires_grad]

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)


def dropout_free_config(config):
    """A copy of ``config`` with every float attribute naming a dropout (``*dropout*``,
    ``*pdrop``, BART's ``*layerdrop``) set to 0."""
    config = copy.deepcopy(config)
    for key, value in config.to_dict().items():
        names_a_dropout = any(word in key for word in ("dropout", "pdrop", "layerdrop"))
        if names_a_dropout and isinstance(value, float):
            setattr(config, key, 0.0)
    return config


def _build(model_class, config, seed: int, train: bool = True) -> tuple[nn.Module, nn.Module]:
    """The model (seeded, float64, in ``train`` mode) and its dropout-free twin."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = model_class(config).to(DTYPE)
        twin = model_class(dropout_free_config(config)).to(DTYPE)
    twin.load_state_dict(model.state_dict())
    return model.train(train), twin.train(train)


def _tokens(g: torch.Generator, n: int, t: int) -> Tensor:
    return torch.randint(0, VOCAB, (n, t), generator=g)


def _padding_mask(lengths: list[int], t: int) -> Tensor:
    """Right padding: row i has ``lengths[i]`` ones then zeros."""
    return (torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]).long()


def _lm_data(seed: int) -> list[Batch]:
    """A padded batch of 3 sequences of 6 (labels -100 on the padding) and an unpadded
    batch of 2 sequences of 4 (no ``attention_mask``)."""
    g = torch.Generator().manual_seed(seed)
    ids = _tokens(g, 3, 6)
    mask = _padding_mask([6, 4, 3], 6)
    labels = ids.masked_fill(mask == 0, -100)
    ids2 = _tokens(g, 2, 4)
    return [
        ({"input_ids": ids, "attention_mask": mask}, labels),
        ({"input_ids": ids2}, ids2.clone()),
    ]


# -- the cases ---------------------------------------------------------------------------------


def gpt2(attention: str) -> HFCase:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=VOCAB, n_positions=8, n_embd=8, n_layer=1, n_head=2,
        attn_implementation=attention,
    )
    model, twin = _build(GPT2LMHeadModel, config, seed=1)
    return HFCase(
        f"gpt2_{attention}", model, "CausalLMLoss", "causal_lm", _lm_data(11),
        twin, block=["transformer.h.0.attn.c_attn.bias", "transformer.ln_f.weight"],
        notes="Conv1D layers; lm_head.weight is transformer.wte.weight; dropout 0.1 x3",
    )


def llama(attention: str) -> HFCase:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8,
        attention_dropout=0.1, attn_implementation=attention,
    )
    model, twin = _build(LlamaForCausalLM, config, seed=2)
    return HFCase(
        f"llama_{attention}", model, "CausalLMLoss", "causal_lm", _lm_data(12),
        twin,
        block=["model.layers.0.self_attn.k_proj.weight",
               "model.layers.0.post_attention_layernorm.weight"],
        rtol=FLOAT32_CAST_RTOL,
        notes="RMSNorm in float32; rotary; SiLU-gated MLP; GQA 4 heads / 2 kv heads; "
        "attention_dropout raised from 0 to 0.1",
    )


def bert(attention: str) -> HFCase:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=VOCAB, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16, max_position_embeddings=8, type_vocab_size=2, num_labels=3,
        attn_implementation=attention,
    )
    model, twin = _build(BertForSequenceClassification, config, seed=3)
    g = torch.Generator().manual_seed(13)
    data = []
    for lengths in ([5, 3, 4, 2], [5, 4]):
        n, t = len(lengths), 5
        token_types = (torch.arange(t)[None, :] >= 2).long().expand(n, t).clone()
        inputs = {
            "input_ids": _tokens(g, n, t),
            "attention_mask": _padding_mask(lengths, t),
            "token_type_ids": token_types,
        }
        data.append((inputs, torch.randint(0, 3, (n,), generator=g)))
    return HFCase(
        f"bert_{attention}", model, "CrossEntropyLoss", "classification", data, twin,
        block=["bert.encoder.layer.0.attention.self.query.bias", "classifier.weight"],
        notes="pooler tanh; dropout 0.1 (hidden, attention probabilities, classifier)",
    )


def vit(attention: str) -> HFCase:
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        image_size=8, patch_size=4, num_channels=1, hidden_size=8, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=16, num_labels=3,
        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
        attn_implementation=attention,
    )
    model, twin = _build(ViTForImageClassification, config, seed=4)
    g = torch.Generator().manual_seed(14)
    data = [
        ({"pixel_values": torch.randn(n, 1, 8, 8, generator=g, dtype=DTYPE)},
         torch.randint(0, 3, (n,), generator=g))
        for n in (4, 2)
    ]
    return HFCase(
        f"vit_{attention}", model, "CrossEntropyLoss", "classification", data, twin,
        block=["vit.layers.0.attention.q_proj.bias", "classifier.weight"],
        rtol=FLOAT32_CAST_RTOL if attention == "eager" else FLOAT64_RTOL,
        notes="eager attention softmax in float32; dropout raised from 0 to 0.1",
    )


def _resnet(train: bool) -> HFCase:
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(
        num_channels=1, embedding_size=4, hidden_sizes=[4, 8], depths=[1, 1],
        layer_type="basic", num_labels=3,
    )
    model, twin = _build(ResNetForImageClassification, config, seed=5)
    g = torch.Generator().manual_seed(15)
    with torch.no_grad():  # running statistics away from (0, 1), so eval mode differs
        for _ in range(3):
            model(pixel_values=2 + 3 * torch.randn(4, 1, 16, 16, generator=g, dtype=DTYPE))
    twin.load_state_dict(model.state_dict())
    model.train(train)
    twin.train(train)
    if train:
        _batch_statistics_only(twin)
    data = [
        ({"pixel_values": torch.randn(n, 1, 16, 16, generator=g, dtype=DTYPE)},
         torch.randint(0, 3, (n,), generator=g))
        for n in (4, 3)
    ]
    mode = "train" if train else "eval"
    return HFCase(
        f"resnet_{mode}", model, "CrossEntropyLoss", "classification", data, twin,
        block=["resnet.embedder.embedder.normalization.weight", "classifier.1.weight"],
        batch_norm=True,
        notes="in-place residual add after BatchNorm; ReLU, max-pool (piecewise linear)",
    )


def _batch_statistics_only(model: nn.Module) -> None:
    """Every BatchNorm of ``model`` normalises with batch statistics and has no running
    statistics to update (so the oracle's forward is a pure function of θ and X)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.track_running_stats = False
            module.running_mean = module.running_var = module.num_batches_tracked = None


def bart(attention: str) -> HFCase:
    from transformers import BartConfig, BartForConditionalGeneration

    config = BartConfig(
        vocab_size=VOCAB, d_model=8, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=8,
        decoder_ffn_dim=8, max_position_embeddings=8, attention_dropout=0.1,
        activation_dropout=0.1, attn_implementation=attention,
    )
    model, twin = _build(BartForConditionalGeneration, config, seed=6)
    g = torch.Generator().manual_seed(16)
    data = []
    for lengths, t_out in (([6, 4, 5], 5), ([6, 3], 5)):
        n = len(lengths)
        inputs = {
            "input_ids": _tokens(g, n, 6),
            "attention_mask": _padding_mask(lengths, 6),
            "decoder_input_ids": _tokens(g, n, t_out),
        }
        labels = _tokens(g, n, t_out)
        labels[0, -1] = -100
        data.append((inputs, labels))
    return HFCase(
        f"bart_{attention}", model, "TokenCrossEntropyLoss", "token", data, twin,
        block=["model.encoder.layers.0.self_attn.q_proj.bias",
               "model.decoder.layers.0.encoder_attn.v_proj.bias",
               "model.decoder.layernorm_embedding.weight"],
        notes="functional F.dropout (dropout 0.1, attention and activation dropout raised "
        "to 0.1); lm_head tied to model.shared; final_logits_bias buffer",
    )


CASES: dict[str, Callable[[], HFCase]] = {}
for _attention in ATTENTION:
    for _family in (gpt2, llama, bert, vit, bart):
        CASES[f"{_family.__name__}_{_attention}"] = (
            lambda family=_family, attention=_attention: family(attention)
        )
CASES["resnet_train"] = lambda: _resnet(train=True)
CASES["resnet_eval"] = lambda: _resnet(train=False)


@pytest.fixture
def one_torch_thread():
    """Run a test on one torch thread (the machine is shared; the models are tiny, and a
    second thread only spins). Import it into a test module and mark the module
    ``pytest.mark.usefixtures("one_torch_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(name: str) -> HFCase:
    """A fresh case (new model, new data) by name."""
    import transformers

    transformers.logging.set_verbosity_error()
    return CASES[name]()
