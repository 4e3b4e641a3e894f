"""What the study reads back: the HTML report, paired statistics, the verdicts, the ablation and defense tables, the
figures and their styling, one number formatter and the metric registry every table and log selects from."""
