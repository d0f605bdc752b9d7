"""The BentoML side: the HTTP contract, the model store, Bento builds and running a service."""
