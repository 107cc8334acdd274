"""Desired-state loaders: the file format's models (document) and the YAML loader (yamlfile).

The loader reads files and photos; the models are pure validation.
"""
