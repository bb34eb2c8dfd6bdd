"""Jobs over a finished run: labelling, distillation, export, project set-up."""
