"""moxin-plugin-orpo: ORPO (Hong et al. 2024) as a moxin objective, built outside moxin."""
