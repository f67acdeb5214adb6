"""Model families. Importing this package registers every architecture.

One module per family; each registers its builders with `@register_architecture`.
A test fails if a module here registers nothing, so a forgotten import breaks CI.
"""
