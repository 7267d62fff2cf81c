"""Pure ML library of XAL: images, wavelets, network, training, metrics, selection strategies.

No database, no Celery, no HTTP; never imports backend.
"""
