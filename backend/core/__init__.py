"""The shared core: what the API (backend.api, backend.services) and the workers (worker) both
use. Settings, errors, blob storage, the database models and session, query predicates, the cell
readers and image decoding, the catalogue of selection strategies and the job states and task
names. It imports neither the API nor the worker, nor torch."""
