"""The strategy lifecycle: Discovery -> Validation -> Paper -> Live -> Retired, as a pure state machine."""
