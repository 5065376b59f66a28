"""Inference: cached decoding of a tabula Transformer for every layer kind, sampling, streaming.

The model code (compiler/) stays plain; everything that knows about caches lives here.

Entry point (also `tabula.load_generator`):

    gen = load_generator(RUN_DIR | CHECKPOINT | SPEC | HF_DIR, device="cpu", absorb=None, slack=16,
                         on_context_full="stop")                                   -> Generator
    gen.generate(prompt | [prompts], SamplingParams(...) or **kwargs, on_long_prompt="refuse"|"truncate")
        -> Completion(prompt_ids, token_ids, text, logprobs, finish_reason, stop, truncated, top_logprobs)
           (a list for a list of prompts; a prompt is a str or a list of ids)
    gen.stream(prompt | [prompts], ...) -> Iterator[Chunk(index, token, text, logprob, top_logprobs, finish_reason)]
    Generator(model, tokenizer=None, *, eos_id=None, start_ids=None, absorb=None, slack=16, on_context_full="stop")
    gen.prompt_ids(prompt, on_long_prompt) -> (ids, dropped)   raises PromptTooLong / UnknownToken (RunInputError)
    gen.sequences(prompts, params) -> [Sequence]; gen.run(sequences) -> Iterator[Chunk]   (one batch)

SamplingParams (sampling.py, frozen): max_new_tokens, temperature (0 = greedy), top_k, top_p, min_p,
repetition_penalty, stop (strings), stop_token_ids, ignore_eos, seed, top_logprobs. `Sampler(params,
prompt_ids).sample(logits (V,)) -> (token, logprob, top)`; `process(logits, params, seen)` the processors.

Sequence (generator.py): one request's state (sampler, IncrementalDecoder, StopText):
`seq.choose(logits (V,)) -> Chunk` samples and records; `seq.accept(token, logprob)` records a token chosen
elsewhere (speculative decoding); `seq.end(reason)`; `seq.finished`, `seq.ids`, `seq.completion()`.

The low level, for schedulers (continuous batching) and speculative decoding:

    dec = Decoder(model, absorb=None, slack=16)          (decoder.py; gen.decoder is one)
    cache = dec.new_cache(batch)                          virtual tokens (prompt/prefix tuning) already in
    logits = dec.prefill(cache, [ids_row0, ids_row1])     (B, V) after each row's last prompt token
    logits = dec.step(cache, [tok0, tok1])                (B, V): one token a row
    logits = dec.forward(cache, ids (B, T), n_valid=None) (B, T, V) for every position: feed k draft tokens
                                                          and verify them in one pass; n_valid (B,) real
                                                          tokens a row (the rest padding, never cached)
    cache.rollback(n)           forget the last n tokens of every row (or one count a row: [n0, n1]);
                                a sliding-window layer keeps `slack` extra slots, so n <= slack there
                                (RollbackError past it)
    cache.select([rows])        a cache of those rows: rows leave
    Cache.concat([c1, c2])      rows join (each keeps its own length); caches of one Decoder
    cache.lengths               (B,) tokens a row holds (virtual ones included); dec.max_len the limit
                                (ContextFull past it)
    cache.nbytes(), cache.bytes_per_token()

Each row has its own length and positions, so rows of any lengths share a batch.

Layer kinds (layers.py): `LAYERS` is a Registry of LayerKind classes (instantiated once per layer):
`prepare(module, options) -> aux`, `new_state(module, aux, batch, ctx, *, window, options) -> LayerState`,
`forward(module, aux, x (B, T, C) normed input, state, ctx: StepContext) -> (B, T, C)`. The Decoder
dispatches PER LAYER on the block's module (`kind_of(module)`: a `cache_kind` attribute, else the kind
its class has in compiler/blocks' registries, else its class name): `block.attn` normally (the Decoder
adds the residuals and runs the block's norms and MLP); when the block itself is registered, the kind
runs the whole block (returns its output). A layer's window: `block.window`, else `block.attn.window`,
else `model.window`. Registered: mha, gqa, mqa (attention.py, keys/values per kv head; windowed layers
in a rolling buffer of window + slack tokens), mla (latent.py: the kv latent and rotary key only;
absorbed or expanded). A recurrent layer (Mamba) registers its kind with a state implementing
LayerState (cache.py: select, concat_with, rollback(lengths), nbytes, bytes_per_token).

Quantization (quantize.py): `quantize_model(model, "int8"|"int4", group_size=None) -> Quantized` (weight-only,
torchao, in place; QuantizationUnsupported for what cannot be done), `weight_bytes(model)`; perplexity.py:
`perplexity(model, batches)`. Speculative decoding (speculative.py): `SpeculativeDecoder(target_decoder,
draft_decoder, k).generate(prompt_ids, params) -> Iterator[(token, logprob)]`, `.stats.acceptance_rate`;
`check_draft(target_vocab, draft_vocab)` (DraftRefused).

Files: buffer.py (TokenBuffer: linear or rolling per-token storage), pool.py (BlockPool: blocks of tokens with
a limit, and their tensors), paged.py (PagedBuffer: a full-attention layer's tokens in the pool's blocks; the
server's caches, Decoder.new_cache(batch, pool=, seqs=)), cache.py (Cache, LayerState,
KVState), layers.py, attention.py, latent.py, decoder.py, sampling.py, detok.py (IncrementalDecoder,
StopText), generator.py, load.py (load_generator).
"""

from .buffer import RollbackError, TokenBuffer
from .cache import Cache, KVState, LayerState
from .decoder import ContextFull, Decoder
from .generator import Chunk, Completion, Generator, PromptTooLong, Sequence, UnknownToken, greedy_ids
from .layers import LAYERS, LayerKind, Options, StepContext, kind_of
from .load import load_generator
from .sampling import Sampler, SamplingParams

__all__ = ["Cache", "Chunk", "Completion", "ContextFull", "Decoder", "Generator", "KVState", "LAYERS", "LayerKind",
           "LayerState", "Options", "PromptTooLong", "RollbackError", "Sampler", "SamplingParams", "Sequence", "StepContext",
           "TokenBuffer", "UnknownToken", "greedy_ids", "kind_of", "load_generator"]
