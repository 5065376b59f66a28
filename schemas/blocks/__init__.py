"""The kinds of the model's blocks as the spec states them, each with its torch-free facts:

    attention.py  mha, gqa, mqa (and AttentionSpec, what every attention kind answers)
    mla.py        mla
    mlp.py        gelu, swiglu              norm.py      rmsnorm, layernorm
    position.py   rope, learned, none       costs.py     shapes and activation storage
    mamba.py      the Mamba-1 mixer (the mamba block kind's)   block.py  what every block kind answers

Each kind is one frozen spec class: its fields (documented for the JSON Schema and the wizard),
its derived widths, its parameter shapes, FLOPs and activation bytes, its checks. Its module,
initialisation and Hugging Face mapping live in compiler/blocks/ under the same file name.
schemas/model.py joins the kinds into the discriminated unions a spec chooses from.
"""
