"""What users run and look at: figures (:mod:`~zennit_bilrp.app.viz`) and the command line
(:mod:`~zennit_bilrp.app.cli`)."""
