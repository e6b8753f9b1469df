"""Click commands of the ``shoprec`` CLI, one module per area; each calls a plain function."""
