"""flagstack.annotate: label long documents by in-context learning on flagstack.engine, and evaluate it."""
