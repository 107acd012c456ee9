"""The benchmarks' logic, tested like the rest of the package; ``benchmarks/*.py`` parse arguments
and print.

* :mod:`.common` -- volume sizes, our server with given weights, run records, ``mean ± std``, GPU sampling;
* :mod:`.annotation_loop` -- the simulated annotation loop (``benchmarks/active_learning.py``);
* :mod:`.uncertainty_signal` -- does a study's uncertainty point at what the models get wrong;
* :mod:`.stock_comparison` -- the cascade against the stock MONAI Label radiology app, and
  :mod:`.stock_report`, its tables, plot and report;
* :mod:`.transfer` -- the lesion classifier against radiomics, one feature, scratch and fine-tuning.

Each rebuilds its report from its recorded JSON (``--from-json`` on the scripts; ``transfer.py --report``).
"""
