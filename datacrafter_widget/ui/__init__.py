"""The notebook front end: the anywidget widget (sources in js/, bundle in static/)."""
