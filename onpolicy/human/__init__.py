"""People as the judge: the `human` reward, its labelling page, the labels it keeps in the run directory, and
their export to and import from Label Studio."""
