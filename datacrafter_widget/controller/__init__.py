"""The controller: DataCrafter owns project state; background jobs; the cached map of a project."""
