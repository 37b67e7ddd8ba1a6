"""Human review of a published version: a local labelling page (`server`), durable append-only
labels beside the version (`records`), a seeded stratified sample (`sample`), the agreement of the
published pairs with the humans and between reviewers (`agreement`, `audit`), and the labels as a
gold file for `eval-annotator` (`export`). `prefpipe review` (`command`) wires them."""
