"""Files in and out: every model `mox` reads or writes is a plain Hugging Face folder (config.json,
safetensors shards with an index, tokenizer files, a README card), so other tools load it without
knowing this package. Nothing here loads a whole model: weights are handled tensor by tensor.

  folders.py   file names of an HF folder, auxiliary files and their copy
  cards.py     model cards
  atomic.py    atomic output folders and files, refusals to write over an input
  loading.py   models and tokenizers, dtype names, the load policy, model-folder checks
  reading.py   safetensors headers, a folder's weight files, tensor-by-tensor reading
  shards.py    shard sizes and the background shard writer
"""
