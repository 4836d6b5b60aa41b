"""Studies: specifications, plans and adaptive sampling, preparation of stimuli, the participant service, the guide
and the simulation that tests the samplers."""
