"""Generation backends behind the one sampler interface: ``generator(model, tokenizer, prompts, n, ...) -> Rollout``.

``hf`` is transformers' ``generate`` with a KV cache (CPU and GPU). ``vllm`` is an optional extra for GPU
machines: a colocated vLLM engine whose weights are overwritten from the trained policy after every
optimizer step (``sync``), the way TRL's colocate mode does it. Methods call ``sync`` unconditionally;
it is free for ``hf``, which samples from the live model.
"""

from __future__ import annotations

import tempfile

import torch

from workbench.errors import ConfigError
from workbench.policy.sampler import Rollout, encode_prompts, finish_rollout, sample
from workbench.registry import Registry

GENERATORS = Registry("generation backend")


@GENERATORS.register("hf")
class HFGenerator:
    """transformers ``generate`` on the live policy; nothing to synchronise."""

    def __init__(self, **_):
        pass

    def __call__(self, model, tokenizer, prompts, n=1, max_new_tokens=32, temperature=1.0, top_p=1.0) -> Rollout:
        return sample(model, tokenizer, prompts, n=n, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)

    def sync(self, model) -> None:
        pass


@GENERATORS.register("vllm")
class VLLMGenerator:
    """A vLLM engine on the same GPU, loaded once from a snapshot of the policy and refreshed in place.

    Needs ``pip install vllm`` and a CUDA device; the sampled token ids are turned into the same
    left/right-padded ``Rollout`` as the HF path, so everything downstream is backend-agnostic.
    """

    def __init__(self, gpu_memory_utilization: float = 0.3, max_model_len: int = 4096, **_):
        try:
            import vllm  # noqa: F401
        except ImportError:
            raise ConfigError("method.generation.backend", "vllm is not installed", "pip install vllm on a GPU machine, or use backend=hf") from None
        if not torch.cuda.is_available():
            raise ConfigError("method.generation.backend", "vllm needs a CUDA GPU and none is visible", "use method.generation.backend=hf on CPU")
        self.gpu_memory_utilization = gpu_memory_utilization
        self.max_model_len = max_model_len
        self.llm = None

    def _start(self, model, tokenizer):
        from vllm import LLM

        snapshot = tempfile.mkdtemp(prefix="workbench-vllm-")
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        base.save_pretrained(snapshot)
        tokenizer.save_pretrained(snapshot)
        self.llm = LLM(model=snapshot, gpu_memory_utilization=self.gpu_memory_utilization, max_model_len=self.max_model_len,
                       dtype=str(next(base.parameters()).dtype).removeprefix("torch."), enable_prefix_caching=True)

    def sync(self, model) -> None:
        if self.llm is None:
            return
        if hasattr(model, "merge_adapter"):  # LoRA: push merged weights, then restore the adapters
            model.merge_adapter()
        try:
            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            runner = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
            for name, param in base.named_parameters():
                if "lora_" in name:
                    continue
                runner.load_weights([(name.replace(".base_layer", ""), param.data)])
        finally:
            if hasattr(model, "unmerge_adapter"):
                model.unmerge_adapter()
        self.llm.reset_prefix_cache()

    @torch.no_grad()
    def __call__(self, model, tokenizer, prompts, n=1, max_new_tokens=32, temperature=1.0, top_p=1.0) -> Rollout:
        from vllm import SamplingParams

        if self.llm is None:
            self._start(model, tokenizer)
        device = next(model.parameters()).device
        prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts, device)
        unpadded = [ids[m.bool()].tolist() for ids, m in zip(prompt_ids, prompt_mask)]
        params = SamplingParams(n=n, temperature=max(temperature, 0.0), top_p=top_p, max_tokens=max_new_tokens,
                                stop_token_ids=[tokenizer.eos_token_id])
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in unpadded], sampling_params=params, use_tqdm=False)
        completions = [list(o.token_ids) for out in outputs for o in out.outputs]
        width = max(1, max(len(c) for c in completions))
        completion_ids = torch.full((len(completions), width), tokenizer.pad_token_id, dtype=torch.long)
        for i, c in enumerate(completions):
            completion_ids[i, : len(c)] = torch.tensor(c, dtype=torch.long)
        if n > 1:
            prompt_ids, prompt_mask = prompt_ids.repeat_interleave(n, 0), prompt_mask.repeat_interleave(n, 0)
        return finish_rollout(tokenizer, prompt_ids, prompt_mask, completion_ids.to(device))


def build_generator(spec) -> HFGenerator | VLLMGenerator:
    spec = dict(spec or {})
    backend = spec.pop("backend", "hf")
    if backend not in GENERATORS:
        raise ConfigError("method.generation.backend", f"unknown backend '{backend}'", f"choose from {sorted(GENERATORS)}")
    return GENERATORS[backend](**spec)
