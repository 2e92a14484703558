"""Local stand-ins for outside services speaking their documented wire protocols, for tests and benches; not shipped."""
