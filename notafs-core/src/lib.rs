//! notafs core (being written)
