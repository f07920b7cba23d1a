"""Low-level helpers that depend on nothing else in the project, so configs/, replay/ and run/ can all
import them."""
