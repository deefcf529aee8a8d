"""Vector stores: stores, their files and file batches, background ingestion, and search.

Where things are:
  service.py        stores (CRUD, counts, expiry, activity) and `attach_files`
  files.py          a store's files and file batches
  search.py         `search_stores` (multi-query search) and the search endpoint's `search_store`
  ingestion.py      the ingestion worker (parse, chunk, embed, index), `wait_for_ingestion`
  thread_stores.py  a thread's own store for message attachments
  schemas.py        requests and the response objects (`XObject.from_row`)

The public surface other domains use (nothing else is meant for them):
  service.add_vector_store(session, project_id, body)
                                                   a store in the caller's transaction
                                                   (the `tool_resources` vector_stores helper)
  service.attach_files(session, store_id, files)   queue files for ingestion into a store
                                                   (the caller checked the store and files)
  thread_stores.attach_to_thread_store(session, thread, messages)
                                                   ensure the thread's store holds the
                                                   messages' file_search attachments
  ingestion.wait_for_ingestion(session, store_ids, patience)
                                                   wait (a while) until the stores' files are in
  service.require_stores(session, project_id, store_ids)
                                                   404 unless all are the project's stores
  search.search_stores(session, index, embedder, project_id, store_ids, queries, *, …,
                       score_threshold, filters)   merged best-first hits for several queries
"""
