"""Training: building blocks (``blocks``), variant resolution (``resolve``), the stage runner
(``stage``)."""
