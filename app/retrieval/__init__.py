"""Retrieval for file_search: parsing, chunking, embeddings and the Qdrant index.

No HTTP or SQL here; the files / vector-stores API drives these modules:
- parsing.extract_text(path, filename, mime_type) -> str   (sync: use asyncio.to_thread)
- chunking.chunk_text(text, max_chunk_size_tokens, chunk_overlap_tokens) -> list[Chunk]
- embeddings.Embedder(model, ...).embed(texts) -> list[list[float]]   (optional)
- index.VectorIndex: upsert / delete / search; index.create_index(settings) opens it lazily
- qdrant_index.QdrantIndex(url=... | path=..., dense_dim=...): the Qdrant backend
"""
